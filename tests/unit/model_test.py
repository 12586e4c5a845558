"""Tests for jaxrec.model: a float64 reference encoder, causality and padding invariance.

Shape key: B batch, L sequence length, D hidden size, I item table rows (0 = padding).
Sequences are left-padded: row b starts with num_pad[b] slots of id 0.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import loss
from jaxrec import masks
from jaxrec.model import ModelConfig, Seq2Seq, init_params, position_ids

jax.config.update("jax_numpy_rank_promotion", "raise")

NUM_ITEMS = 13  # ids 1..12; causality tests split them into early (1..6) and late (7..12)
BATCH = 3
LENGTH = 8  # the position table's size; the padding-invariance test also encodes at SHORT
SHORT = 5
CONFIGS = (
    ModelConfig(num_items=NUM_ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=2),
    ModelConfig(num_items=NUM_ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=4,
                feed_forward_size=8, share_embeddings=True, position_order="backward"),
    ModelConfig(num_items=NUM_ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=2,
                feed_forward_size=8, share_embeddings=True, embedding_layer_norm=True),
    ModelConfig(num_items=NUM_ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=2,
                feed_forward_size=8, encoder="bsarec", bsarec_alpha=0.7),
)
CONFIG_IDS = ("spec", "ffn_shared_backward", "embedding_norm", "bsarec")


@functools.lru_cache(maxsize=None)
def param_shapes(config: ModelConfig):
  return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


def random_params(config: ModelConfig, seed: int):
  """Parameters of the right tree, every leaf N(0, 0.5^2): far from init, attention not flat."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: rng.normal(scale=0.5, size=p.shape).astype(np.float32),
                      param_shapes(config))


@functools.lru_cache(maxsize=None)
def jitted_encode(config: ModelConfig):
  return jax.jit(lambda params, ids: Seq2Seq(config).apply({"params": params}, ids,
                                                           method=Seq2Seq.encode))


def encode(config, params, ids_BxL):
  return np.asarray(jitted_encode(config)(params, ids_BxL))


def eager_encode(config, params, ids_BxL):
  with jax.disable_jit():
    return np.asarray(Seq2Seq(config).apply({"params": params}, ids_BxL, method=Seq2Seq.encode))


def model_loss(config: ModelConfig, params, ids_BxL, label_BxL, hot_weight_BxL):
  """The training loss of SPEC section 5 on the model's two sides."""
  seq_out, ids_emb = Seq2Seq(config).apply({"params": params}, ids_BxL, label_BxL)
  return loss.in_batch_softmax_loss(seq_out, ids_emb, hot_weight_BxL, masks.padding_mask(ids_BxL))


@functools.lru_cache(maxsize=None)
def jitted_loss(config: ModelConfig):
  return jax.jit(functools.partial(model_loss, config))


@functools.lru_cache(maxsize=None)
def jitted_loss_grad(config: ModelConfig):
  return jax.jit(jax.grad(functools.partial(model_loss, config)))


def left_padded(rng, num_pad_B, length, low=1, high=NUM_ITEMS):
  """[B, length] ids in [low, high) after num_pad_B[b] leading zeros."""
  ids_BxL = rng.integers(low, high, (len(num_pad_B), length)).astype(np.int32)
  ids_BxL[np.arange(length)[None, :] < np.asarray(num_pad_B)[:, None]] = 0
  return ids_BxL


@st.composite
def cases(draw, max_pad=LENGTH - 1, config=None):
  """(config, params, rng, num_pad [B] in 0..max_pad); any of CONFIGS unless `config` is given."""
  config = draw(st.sampled_from(CONFIGS)) if config is None else config
  seed = draw(st.integers(0, 2**32 - 1))
  rng = np.random.default_rng(seed)
  num_pad_B = rng.integers(0, max_pad + 1, BATCH)
  num_pad_B[0] = draw(st.integers(0, max_pad))  # let hypothesis shrink one row's padding
  return config, random_params(config, seed), rng, num_pad_B


# ----------------------------------------------------------------------------- reference


def naive_positions(ids_BxL, order):
  out = np.zeros(ids_BxL.shape, np.int64)
  for b, row in enumerate(ids_BxL):
    real = [t for t in range(len(row)) if row[t] != 0]
    for n, t in enumerate(real):
      out[b, t] = n if order == "forward" else len(real) - 1 - n
  return out


def _layer_norm(x, scale, bias, eps):
  mean = x.mean()
  var = ((x - mean) ** 2).mean()
  return (x - mean) / math.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def naive_encode(config: ModelConfig, params, ids_BxL):
  """SPEC sections 2-4 in float64, one row, head and query position at a time.

  Only real positions are computed (padded ones are never read by real ones); NaN elsewhere.
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  batch, length = ids_BxL.shape
  hidden, heads = config.hidden_size, config.num_attention_heads
  size = hidden // heads
  pos_BxL = naive_positions(ids_BxL, config.position_order)
  out = np.full((batch, length, hidden), np.nan)
  for b in range(batch):
    real = [t for t in range(length) if ids_BxL[b, t] != 0]
    x = {t: p["item_embeddings"]["embedding"][ids_BxL[b, t]]
            + p["position_embeddings"]["embedding"][pos_BxL[b, t]] for t in real}
    if config.embedding_layer_norm:
      x = {t: _layer_norm(x[t], p["embedding_norm"]["scale"], p["embedding_norm"]["bias"],
                          config.layer_norm_epsilon) for t in real}
    for i in range(config.num_hidden_layers):
      lp = p[f"layer_{i}"]
      dense = lambda name, v: v @ lp[name]["kernel"] + lp[name]["bias"]
      q, k, v = ({t: dense(name, x[t]) for t in real} for name in ("query", "key", "value"))
      new_x = {}
      for t in real:
        context = np.zeros(hidden)
        for h in range(heads):
          cols = slice(h * size, (h + 1) * size)
          keys = [s for s in real if s <= t]  # causal and real keys only
          scores = [float(q[t][cols] @ k[s][cols]) / math.sqrt(size) for s in keys]
          top = max(scores)
          weights = [math.exp(z - top) for z in scores]
          for s, w in zip(keys, weights):
            context[cols] += w / sum(weights) * v[s][cols]
        y = _layer_norm(dense("attention_output", context) + x[t], lp["attention_norm"]["scale"],
                        lp["attention_norm"]["bias"], config.layer_norm_epsilon)
        if config.encoder == "bsarec":  # a causal moving average over the real positions <= t
          gamma = 1.0 / (1.0 + np.exp(-lp["filter_decay"]))
          low = sum((1 - gamma) * gamma ** (t - s) * x[s] for s in real if s <= t)
          f = low + lp["filter_beta"] ** 2 * (x[t] - low)
          filtered = _layer_norm(f + x[t], lp["filter_norm"]["scale"], lp["filter_norm"]["bias"],
                                 config.layer_norm_epsilon)
          y = config.bsarec_alpha * filtered + (1 - config.bsarec_alpha) * y
        if config.feed_forward_size:
          f = dense("feed_forward_out", _gelu_tanh(dense("feed_forward_in", y)))
          y = _layer_norm(f + y, lp["feed_forward_norm"]["scale"], lp["feed_forward_norm"]["bias"],
                          config.layer_norm_epsilon)
        new_x[t] = y
      x = new_x
    for t in real:
      out[b, t] = x[t]
  return out


# ----------------------------------------------------------------------------- tests


@settings(deadline=None, max_examples=20)
@given(st.integers(0, 2**32 - 1), st.sampled_from((1, LENGTH)), st.sampled_from(("forward", "backward")))
def test_position_ids_match_loop(seed, length, order):
  rng = np.random.default_rng(seed)
  ids_BxL = left_padded(rng, rng.integers(0, length, BATCH), length)
  np.testing.assert_array_equal(np.asarray(position_ids(ids_BxL, order)),
                                naive_positions(ids_BxL, order))


def check_matches_reference(config, params, ids_BxL, encode_fn):
  want = naive_encode(config, params, ids_BxL)
  got = encode_fn(config, params, ids_BxL)
  real = ids_BxL != 0
  assert got.shape == (BATCH, LENGTH, config.hidden_size) and got.dtype == np.float32
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


def check_later_items_change_nothing_before(config, params, rng, num_pad_B, t_B, encode_fn):
  """Changing the real items after position t[b] leaves every output at <= t[b] unchanged."""
  ids_BxL = left_padded(rng, num_pad_B, LENGTH)
  later_BxL = np.arange(LENGTH)[None, :] > t_B[:, None]
  shift_BxL = rng.integers(1, NUM_ITEMS - 1, ids_BxL.shape)  # another nonzero id, 1..12
  changed_BxL = np.where(later_BxL, (ids_BxL - 1 + shift_BxL) % (NUM_ITEMS - 1) + 1,
                         ids_BxL).astype(np.int32)
  assert np.all(changed_BxL[later_BxL] != ids_BxL[later_BxL]) and np.all(changed_BxL[later_BxL])
  kept_BxL = (ids_BxL != 0) & ~later_BxL
  before, after = encode_fn(config, params, ids_BxL), encode_fn(config, params, changed_BxL)
  np.testing.assert_allclose(after[kept_BxL], before[kept_BxL], rtol=0, atol=1e-6)
  # The check has teeth: the last position sees the changed items.
  assert not np.allclose(after[:, -1], before[:, -1], atol=1e-3)


@functools.lru_cache(maxsize=None)
def jitted_item_grad(config: ModelConfig):
  return jax.jit(functools.partial(item_grad, config))


def item_grad(config, params, ids_BxL, weights_BxLxD):
  """d sum(encode(ids) * weights) / d item_embeddings: [I, D]."""
  def weighted_outputs(p):
    return jnp.sum(Seq2Seq(config).apply({"params": p}, ids_BxL, method=Seq2Seq.encode)
                   * weights_BxLxD)
  return jax.grad(weighted_outputs)(params)["item_embeddings"]["embedding"]


def check_gradient_ignores_later_items(config, params, rng, num_pad_B, t_B, grad_fn):
  """d(outputs at real positions <= t[b]) / d(item table rows only used after t[b]) == 0.

  Positions <= t[b] hold items 1..6, positions after t[b] items 7..12, so the rows 7..12 of
  item_embeddings reach the early outputs only through attention to the future.
  """
  later_BxL = np.arange(LENGTH)[None, :] > t_B[:, None]
  ids_BxL = np.where(later_BxL, left_padded(rng, num_pad_B, LENGTH, 7, 13),
                     left_padded(rng, num_pad_B, LENGTH, 1, 7)).astype(np.int32)
  early_BxL = (ids_BxL != 0) & ~later_BxL
  weights_BxLxD = rng.normal(size=(BATCH, LENGTH, config.hidden_size)).astype(np.float32)
  early = np.asarray(grad_fn(config, params, ids_BxL, weights_BxLxD * early_BxL[..., None]))
  np.testing.assert_array_equal(early[7:], 0.0)
  np.testing.assert_array_equal(early[0], 0.0)  # nor the padding row
  assert np.abs(early[1:7]).max() > 1e-4
  # Control: the outputs after t do depend on rows 7..12, so a zero above is not vacuous.
  late = np.asarray(grad_fn(config, params, ids_BxL, weights_BxLxD * later_BxL[..., None]))
  assert np.abs(late[7:]).max() > 1e-4


def draw_t(data, num_pad_B):
  """[B] a real position t[b] with at least one position after it."""
  return np.array([data.draw(st.integers(int(n), LENGTH - 2)) for n in num_pad_B])


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@settings(deadline=None, max_examples=25)
@given(data=st.data())
def test_encode_matches_float64_reference(config, data):
  config, params, rng, num_pad_B = data.draw(cases(config=config))
  check_matches_reference(config, params, left_padded(rng, num_pad_B, LENGTH), encode)


@settings(deadline=None, max_examples=15)
@given(cases(max_pad=LENGTH - 2), st.data())
def test_outputs_do_not_depend_on_later_items(case, data):
  config, params, rng, num_pad_B = case
  check_later_items_change_nothing_before(config, params, rng, num_pad_B, draw_t(data, num_pad_B),
                                          encode)


@settings(deadline=None, max_examples=10)
@given(cases(max_pad=LENGTH - 2), st.data())
def test_gradient_of_outputs_up_to_t_ignores_later_item_rows(case, data):
  config, params, rng, num_pad_B = case
  check_gradient_ignores_later_items(config, params, rng, num_pad_B, draw_t(data, num_pad_B),
                                     lambda c, *args: jitted_item_grad(c)(*args))


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_reference_and_causality_hold_without_jit(config):
  """The same checks op by op (jax.disable_jit), on one fixed case per config: compiling
  every primitive for eager mode is what costs time here."""
  rng = np.random.default_rng(7)
  params = random_params(config, 7)
  num_pad_B, t_B = np.array([0, 3, 6]), np.array([2, 5, 6])
  with jax.disable_jit():
    check_matches_reference(config, params, left_padded(rng, num_pad_B, LENGTH), eager_encode)
    check_later_items_change_nothing_before(config, params, rng, num_pad_B, t_B, eager_encode)
    check_gradient_ignores_later_items(config, params, rng, num_pad_B, t_B, item_grad)


@settings(deadline=None, max_examples=10)
@given(cases(max_pad=SHORT - 1))
def test_more_leading_padding_changes_no_real_output_nor_loss(case):
  """The same real items at length SHORT and at LENGTH (LENGTH - SHORT more padding slots)."""
  config, params, rng, num_pad_B = case
  extra = LENGTH - SHORT
  short_BxS = left_padded(rng, num_pad_B, SHORT)
  long_BxL = np.concatenate([np.zeros((BATCH, extra), np.int32), short_BxS], axis=1)
  real_BxS = short_BxS != 0
  short_out, long_out = encode(config, params, short_BxS), encode(config, params, long_BxL)
  np.testing.assert_allclose(long_out[:, extra:][real_BxS], short_out[real_BxS], rtol=0, atol=1e-5)
  # Loss: labels and logQ weights everywhere (padded slots hold random negatives).
  label_BxL = rng.integers(1, NUM_ITEMS, (BATCH, LENGTH)).astype(np.int32)
  hot_weight_BxL = np.log(rng.uniform(1e-3, 0.5, (BATCH, LENGTH))).astype(np.float32)
  short_loss = jitted_loss(config)(params, short_BxS, label_BxL[:, extra:], hot_weight_BxL[:, extra:])
  long_loss = jitted_loss(config)(params, long_BxL, label_BxL, hot_weight_BxL)
  assert math.isclose(float(long_loss), float(short_loss), rel_tol=1e-5, abs_tol=1e-6)


@settings(deadline=None, max_examples=10)
@given(cases())
def test_padding_embedding_row_changes_no_real_output_nor_loss(case):
  config, params, rng, num_pad_B = case
  ids_BxL = left_padded(rng, num_pad_B, LENGTH)
  label_BxL = rng.integers(1, NUM_ITEMS, (BATCH, LENGTH)).astype(np.int32)  # never 0 (SPEC 1)
  hot_weight_BxL = np.log(rng.uniform(1e-3, 0.5, (BATCH, LENGTH))).astype(np.float32)
  perturbed = jax.tree.map(np.copy, params)
  perturbed["item_embeddings"]["embedding"][0] = rng.normal(scale=5.0, size=config.hidden_size)
  real_BxL = ids_BxL != 0
  np.testing.assert_allclose(encode(config, perturbed, ids_BxL)[real_BxL],
                             encode(config, params, ids_BxL)[real_BxL], rtol=0, atol=1e-6)
  loss_fn = jitted_loss(config)
  before = float(loss_fn(params, ids_BxL, label_BxL, hot_weight_BxL))
  after = float(loss_fn(perturbed, ids_BxL, label_BxL, hot_weight_BxL))
  assert math.isclose(after, before, rel_tol=1e-6, abs_tol=1e-6)
  grads = jitted_loss_grad(config)(params, ids_BxL, label_BxL, hot_weight_BxL)
  np.testing.assert_array_equal(np.asarray(grads["item_embeddings"]["embedding"][0]), 0.0)


def test_user_vector_is_last_position_output():
  config = CONFIGS[0]
  params = random_params(config, 1)
  ids_BxL = left_padded(np.random.default_rng(1), [0, 3, 7], LENGTH)
  user_vectors = jax.jit(lambda p, ids: Seq2Seq(config).apply({"params": p}, ids,
                                                              method=Seq2Seq.user_vectors))
  got = np.asarray(user_vectors(params, ids_BxL))
  np.testing.assert_allclose(got, encode(config, params, ids_BxL)[:, -1], rtol=1e-6, atol=1e-6)
