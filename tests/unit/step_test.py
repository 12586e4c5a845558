"""Row-sparse ("lazy") Adam on the item tables against the dense step it stands in for, and
several steps of it against a float64 numpy lazy Adam written from the definition.

Shape key: B batch rows, L padded length, I item table rows (0 = padding), D hidden size.
"""

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec import config as config_lib
from jaxrec import click_log
from jaxrec import holdout
from jaxrec import step as step_lib
from jaxrec import train
from jaxrec.input_pipeline import Batch
from jaxrec.model import ModelConfig, Seq2Seq

LOG = click_log.synthetic_click_log(300, 400, seed=3, mean_length=6)
SPLIT = holdout.leave_one_out(LOG)


def trainer(sparse: bool, share: bool, loss: str, dropout: float = 0.0) -> train.Trainer:
  model = ModelConfig(num_items=LOG.num_items, seq_length=8, hidden_size=8, num_attention_heads=2,
                      num_hidden_layers=1, share_embeddings=share, hidden_dropout_rate=dropout,
                      attention_dropout_rate=dropout)
  config = config_lib.make(model=model, batch_size=16, optimizer=config_lib.OptimizerConfig(1e-2), eval_every_epochs=0,
                             sparse_embedding_updates=sparse,
                             loss=config_lib.LossConfig(loss, **({'num_negatives': 5, 'negative_distribution': 'popularity'}
                                                                 if loss == 'mixed' else {})))
  return train.Trainer(config, SPLIT, tempfile.mkdtemp())


# With dropout: both steps draw it from the same key, fold_in(rng, step).
@pytest.mark.parametrize("share,loss,dropout", [(False, "inbatch", 0.0), (True, "mixed", 0.2)])
def test_first_step_equals_dense_adam_and_untouched_rows_never_move(share, loss, dropout):
  dense_t, sparse_t = trainer(False, share, loss, dropout), trainer(True, share, loss, dropout)
  dense, sparse = dense_t.init_state(), sparse_t.init_state()
  init = jax.tree.map(np.asarray, sparse.params)
  batches = [sparse_t.batch(0, i)[0] for i in range(2)]
  dense, dense_metrics = dense_t.train_step(dense, batches[0])
  sparse, sparse_metrics = sparse_t.train_step(sparse, batches[0])
  # Step 1 from zero moments: rows with no gradient do not move in dense Adam either,
  # so both steps agree everywhere.
  np.testing.assert_allclose(float(sparse_metrics["loss"]), float(dense_metrics["loss"]), rtol=1e-6)
  # The sparse step's gradient has the touched rows only, the dense one zeros elsewhere: one norm.
  assert float(dense_metrics["grad_norm"]) > 0
  np.testing.assert_allclose(float(sparse_metrics["grad_norm"]), float(dense_metrics["grad_norm"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(sparse.params), jax.tree.leaves(dense.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert int(dense.step) == int(sparse.step) == 1 and dense.step.dtype == sparse.step.dtype == jnp.int32
  dense, dense_metrics = dense_t.train_step(dense, batches[1])  # the dense step goes on from its own state
  assert int(dense.step) == 2 and np.isfinite(float(dense_metrics["loss"]))
  # ... which it kept: its Adam (and schedule) counts are at 2.
  assert [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(dense.opt_state, "count")] == [2, 2]
  sparse, _ = sparse_t.train_step(sparse, batches[1])
  touched = [np.asarray(getattr(b, k)).ravel() for b in batches for k in ("input_ids", "label")]
  if loss == "mixed":  # the shared negatives each step sampled, derived as the step does
    for step in range(2):
      rng = jax.random.split(jax.random.fold_in(sparse.rng, step))[1]
      touched.append(np.asarray(step_lib.sample_negatives(sparse_t.item_log_q, rng, sparse_t.config.loss,
                                                       LOG.num_items)[0]))
  touched = np.unique(np.concatenate(touched))
  untouched = np.setdiff1d(np.arange(LOG.num_items), touched)
  assert len(untouched) > 50
  in_name, out_name = sparse_t.model.table_names()
  for name in {in_name, out_name}:
    now = np.asarray(sparse.params[name]["embedding"])
    np.testing.assert_array_equal(now[untouched], init[name]["embedding"][untouched])
    # The rows this table looked up (item 0, padding, gets no gradient) did move.
    keys = ("input_ids",) * (name == in_name) + ("label",) * (name == out_name)
    used = np.unique(np.concatenate([np.asarray(getattr(b, k)).ravel() for b in batches for k in keys]))
    moved = np.abs(now - init[name]["embedding"]).sum(axis=1) > 0
    assert moved[used[used > 0]].all()


# ----------------------------------------------------------------------------- several steps

ITEMS, ROWS, LENGTH, STEPS = 24, 4, 5, 5
# Item pools of the five steps: overlapping, and leaving rows out for a step or more
# before touching them again (1..4 wait at steps 1 and 3, 5..6 at steps 1 to 3).
POOLS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19),
         (1, 2, 3, 4, 15, 16, 17, 18, 19, 20), (9, 10, 11, 12, 13, 15, 16, 17, 18, 19),
         (1, 2, 3, 4, 5, 6, 20, 21, 22, 23))
B1, B2, EPS = 0.9, 0.95, 1e-8


def pool_batch(rng, pool) -> Batch:
  """Left-padded inputs and labels drawn from `pool` (padded slots' labels too, as negatives)."""
  ids_BxL = rng.choice(pool, (ROWS, LENGTH)).astype(np.int32)
  num_pad_B = np.array([0, 1, 3, 2])
  ids_BxL[np.arange(LENGTH)[None, :] < num_pad_B[:, None]] = 0
  label_BxL = rng.choice(pool, (ROWS, LENGTH)).astype(np.int32)
  hot_weight_BxL = np.log(rng.uniform(0.01, 0.3, (ROWS, LENGTH))).astype(np.float32)
  return Batch(input_ids=ids_BxL, label=label_BxL, hot_weight=hot_weight_BxL,
               row_mask=np.ones(ROWS, np.float32))


def reference_adam_step(ref, grads, table_names, touched, lr_t, t):
  """One float64 Adam step on `ref` = {"params", "m", "v"} (flat {path: array}), from the
  definition: dense leaves all move; an item table's moments and values change only at
  the `touched` rows; bias correction by the global step count t (1 at the first step)."""
  for path, g in grads.items():
    g = np.asarray(g, np.float64)
    rows = touched if path[0] in table_names else slice(None)
    m = ref["m"][path][rows] = B1 * ref["m"][path][rows] + (1 - B1) * g[rows]
    v = ref["v"][path][rows] = B2 * ref["v"][path][rows] + (1 - B2) * g[rows] ** 2
    ref["params"][path][rows] -= lr_t * (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)


def flat(tree) -> dict:
  """{key path: float64 array} of a parameter tree."""
  return {tuple(k.key for k in path): np.asarray(x, np.float64)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat_tree: dict) -> dict:
  """The nested tree of `flat`'s output."""
  tree = {}
  for path, x in flat_tree.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = x
  return tree


@pytest.mark.parametrize("share,loss", [(False, "inbatch"), (True, "mixed")])
def test_several_sparse_steps_match_float64_lazy_adam(share, loss):
  model = Seq2Seq(ModelConfig(num_items=ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=2,
                              num_hidden_layers=1, share_embeddings=share))
  # Popularity negatives: drawn from item_log_q_I, which the step must pass on.
  loss = config_lib.LossConfig(loss, **({"num_negatives": 3, "negative_distribution": "popularity"}
                                        if loss == "mixed" else {}))
  # Cosine decay: a new learning rate every step (none of them 0: every step's update shows).
  optimizer = config_lib.OptimizerConfig(1e-2, "cosine", sparse_embedding_updates=True, b2=B2)
  tx, lr = step_lib.make_optimizer(optimizer, STEPS + 1)
  counts = np.r_[0.0, np.arange(1.0, ITEMS)]  # item i clicked i times
  with np.errstate(divide="ignore"):
    item_log_q_I = jnp.asarray(np.maximum(np.log(counts / counts.sum()), -1e4), jnp.float32)
  # b1 and eps left at their defaults, as train.Trainer leaves them: Adam's (and optax's) 0.9, 1e-8.
  step = jax.jit(functools.partial(step_lib.sparse_train_step, model=model, tx=tx, lr=lr, b2=B2, loss=loss))

  @jax.jit
  def keys_and_negatives(rng, k):
    dropout_rng, sample_rng = jax.random.split(jax.random.fold_in(rng, k))
    if loss.kind != "mixed":
      return dropout_rng, None
    return dropout_rng, step_lib.sample_negatives(item_log_q_I, sample_rng, loss, ITEMS)

  grad_fn = jax.jit(jax.grad(lambda p, batch, rng, negatives: step_lib.loss_fn(
      p, model, batch, rng, loss, negatives)))
  state = jax.jit(lambda key: step_lib.init_state(model, tx, key, sparse_embedding_updates=True))(
      jax.random.key(5))
  names = set(model.table_names())
  ref = {"params": flat(state.params)}
  ref["m"] = {k: np.zeros_like(x) for k, x in ref["params"].items()}
  ref["v"] = {k: np.zeros_like(x) for k, x in ref["params"].items()}
  rng = np.random.default_rng(0)
  touched_by_step = []
  for k, pool in enumerate(POOLS):
    batch = pool_batch(rng, pool)
    # The step's keys and negatives, derived as the step derives them.
    dropout_rng, negatives = keys_and_negatives(state.rng, k)
    # Touched, as step.py defines it: every id the batch looks up (inputs with padding 0,
    # labels, negatives), in every item table; so an unshared input table's row that this
    # batch has only as a label (no gradient there) still decays its moments and moves.
    ids = [batch.input_ids.ravel(), batch.label.ravel()] + ([np.asarray(negatives[0])] if negatives else [])
    touched = np.unique(np.concatenate(ids))
    touched_by_step.append(set(touched.tolist()))
    params32 = jax.tree.map(lambda x: np.asarray(x, np.float32), unflatten(ref["params"]))
    grads = flat(grad_fn(params32, batch, dropout_rng, negatives))
    reference_adam_step(ref, grads, names, touched, float(lr(k)), k + 1)

    before = state
    state, metrics = step(state, batch, item_log_q_I)
    assert int(state.step) == k + 1 and np.isfinite(float(metrics["loss"]))
    got = flat(state.params)
    assert got.keys() == ref["params"].keys()
    for path, want in ref["params"].items():
      np.testing.assert_allclose(got[path], want, rtol=1e-5, atol=1e-6, err_msg=f"step {k + 1} {path}")
    untouched = np.setdiff1d(np.arange(ITEMS), touched)
    for name in names:
      moments = [np.asarray(x) for x in state.opt_state[1][name]]
      for got_moment, key in zip(moments, ("m", "v"), strict=True):
        want = ref[key][(name, "embedding")]  # float32 gradients, by another path: rounding
        np.testing.assert_allclose(got_moment, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"step {k + 1} {name} {key}")
      # Rows the batch does not touch keep their values and moments bit for bit.
      old = [np.asarray(before.params[name]["embedding"])] + [np.asarray(x) for x in before.opt_state[1][name]]
      new = [got[(name, "embedding")]] + moments
      for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(b[untouched], a[untouched], err_msg=f"step {k + 1} {name}")
  # The case does test rows that move, wait a step or more, then move again.
  waited = {r for k in range(1, STEPS - 1) for r in range(ITEMS) if r not in touched_by_step[k]
            and any(r in t for t in touched_by_step[:k]) and any(r in t for t in touched_by_step[k + 1:])}
  assert len(waited) >= 5


# ----------------------------------------------------------------------------- the optimizer


def reference_lr(peak, schedule, warmup, total, t):
  """The learning rate at step t (0-based) from the definition: linear warm-up from 0 over
  `warmup` steps, then constant, or a cosine decay to 0 at step `total`."""
  if t < warmup:
    return peak * t / warmup
  if schedule == "constant":
    return peak
  return peak * 0.5 * (1.0 + np.cos(np.pi * min(t - warmup, total - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule,warmup_steps,total", [("constant", 0, 10), ("constant", 3, 10), ("cosine", 0, 10),
                                                          ("cosine", 4, 10), ("constant", 50, 6), ("cosine", 50, 6),
                                                          ("constant", 5, 1)])
def test_learning_rate_schedules_follow_their_definition(schedule, warmup_steps, total):
  """Warm-up longer than the run is cut to total - 1 steps, so the peak is still reached."""
  config = config_lib.OptimizerConfig(0.5, schedule, warmup_steps=warmup_steps)
  _, lr = step_lib.make_optimizer(config, total)
  warmup = min(warmup_steps, total - 1)
  for t in range(total + 2):
    np.testing.assert_allclose(float(lr(t)), reference_lr(0.5, schedule, warmup, total, t), rtol=1e-5, atol=1e-7,
                               err_msg=f"step {t}")


def test_weight_decay_and_gradient_clipping_follow_adamw():
  """Two steps of float64 AdamW from the definition: gradients clipped to the global norm
  first (the first one is, the second is not), then Adam, then decay of the parameters."""
  lr, decay, clip, b1, b2, eps = 0.1, 0.3, 1.0, 0.9, 0.999, 1e-8
  config = config_lib.OptimizerConfig(lr, weight_decay=decay, grad_clip_norm=clip)
  tx, _ = step_lib.make_optimizer(config, 10)
  params = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[3.0, 0.25]])}
  grads = [{"a": jnp.array([4.0, -6.0, 1.0]), "b": jnp.array([[2.0, 0.0]])},  # global norm ~7.5: clipped to 1
           {"a": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array([[0.05, -0.4]])}]  # norm ~0.55: kept
  state = tx.init(params)
  ref = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in ref.items()}
  v = {k: np.zeros_like(x) for k, x in ref.items()}
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    g64 = {k: np.asarray(x, np.float64) for k, x in g.items()}
    norm = np.sqrt(sum(np.sum(x ** 2) for x in g64.values()))
    scale = min(1.0, clip / norm)
    for k in ref:
      m[k] = b1 * m[k] + (1 - b1) * g64[k] * scale
      v[k] = b2 * v[k] + (1 - b2) * (g64[k] * scale) ** 2
      ref[k] = ref[k] - lr * ((m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps) + decay * ref[k])
    for k in ref:
      np.testing.assert_allclose(np.asarray(params[k]), ref[k], rtol=1e-5, atol=1e-6, err_msg=f"step {t} {k}")


@pytest.mark.parametrize("sparse", [False, True])
def test_init_state_passes_fresh_parameters_through_adapt(sparse):
  """A warm start's `adapt` sees the fresh parameters and the state (and its optimizer
  state) holds what it returns; the step count starts at int32 0."""
  model = Seq2Seq(ModelConfig(num_items=ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=2,
                              num_hidden_layers=1))
  tx, _ = step_lib.make_optimizer(config_lib.OptimizerConfig(1e-2), 10)
  init = jax.jit(lambda key, adapt=None: step_lib.init_state(model, tx, key, sparse, adapt), static_argnums=1)
  fresh = init(jax.random.key(3))
  shift = lambda params: jax.tree.map(lambda x: x + 1.0, params)
  adapted = init(jax.random.key(3), shift)
  for a, b in zip(jax.tree.leaves(adapted.params), jax.tree.leaves(fresh.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b) + 1.0)
  assert int(adapted.step) == 0 and adapted.step.dtype == jnp.int32
  assert jax.tree.structure(adapted.opt_state) == jax.tree.structure(fresh.opt_state)
