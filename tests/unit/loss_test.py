"""Tests for jaxrec.loss against float64 references (SPEC section 5, the design note's TF code).

Shape key: B batch rows (M = B candidate rows), L sequence length, D hidden size.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import loss

jax.config.update("jax_numpy_rank_promotion", "raise")

# A few fixed sizes keep the number of compiled shapes small.
BATCH = (1, 4)  # 1: a lone row is its only candidate, loss 0
LENGTH = (1, 4)
HIDDEN = 3


@st.composite
def loss_inputs(draw):
  """seq_out, ids_emb [B, L, D], hot_weight [B, L] < 0, padding_mask [B, L] of left padding.

  Every row has 0..L-1 leading padded slots, so at least one real slot.
  """
  batch, length = draw(st.sampled_from(BATCH)), draw(st.sampled_from(LENGTH))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  seq_out = rng.normal(size=(batch, length, HIDDEN)).astype(np.float32)
  ids_emb = rng.normal(size=(batch, length, HIDDEN)).astype(np.float32)
  hot_weight = np.log(rng.uniform(1e-4, 0.5, (batch, length))).astype(np.float32)
  num_pad_B = rng.integers(0, length, batch)
  padding_mask = (np.arange(length)[None, :] >= num_pad_B[:, None]).astype(np.float32)
  return seq_out, ids_emb, hot_weight, padding_mask


def naive_loss(seq_out_BxLxD, ids_emb_BxLxD, hot_weight_BxL, padding_mask_BxL):
  """Mean over real (b, l) of -log softmax_m(<out[b, l], emb[m, l]> - w[m, l])[b], in loops."""
  out, emb, w, mask = (np.asarray(a, np.float64) for a in
                       (seq_out_BxLxD, ids_emb_BxLxD, hot_weight_BxL, padding_mask_BxL))
  batch, length, _ = out.shape
  total, count = 0.0, 0.0
  for b in range(batch):
    for l in range(length):
      if mask[b, l] == 0:
        continue
      logits = [float(np.dot(out[b, l], emb[m, l])) - w[m, l] for m in range(batch)]
      top = max(logits)
      log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
      total += log_norm - logits[b]
      count += 1
  return total / count


def tf_formula_loss(seq_out, label_emb, weights, attention_mask):
  """The design note's bert_logits + softmax, transcribed op for op into float64 numpy."""
  seq_out, pos_emb, weights, attention_mask = (np.asarray(a, np.float64) for a in
                                               (seq_out, label_emb, weights, attention_mask))
  logits = np.einsum("bld,mld->lbm", seq_out, pos_emb)  # tf.einsum
  logits = logits - np.transpose(np.expand_dims(weights, 1), (2, 1, 0))
  pos_logits = np.diagonal(logits, axis1=-2, axis2=-1)  # tf.linalg.diag_part: (L, B)
  mask = np.transpose(attention_mask)
  result = -np.sum(pos_logits * mask * 1.0)
  result += np.sum(np.log(np.sum(np.exp(logits), axis=-1)) * mask * 1.0)
  return result / np.sum(mask)


def _jitted_loss(*args):
  return float(jax.jit(loss.in_batch_softmax_loss)(*args))


def _loss_with_and_without_jit(*args):
  with jax.disable_jit():
    eager = loss.in_batch_softmax_loss(*args)
  return _jitted_loss(*args), float(eager)


@settings(deadline=None, max_examples=30)
@given(loss_inputs())
def test_loss_matches_loop_reference_and_tf_formula(case):
  want = naive_loss(*case)
  assert math.isclose(tf_formula_loss(*case), want, rel_tol=1e-12, abs_tol=1e-12)
  for got in _loss_with_and_without_jit(*case):
    assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5), (got, want)


@settings(deadline=None, max_examples=20)
@given(loss_inputs())
def test_logq_is_subtracted_from_candidate_columns(case):
  seq_out, ids_emb, hot_weight, padding_mask = case
  position_major = lambda x: np.transpose(x, (1, 0, 2))
  got = np.asarray(loss.lbm_logits(position_major(seq_out), position_major(ids_emb), hot_weight), np.float64)
  batch, length, _ = seq_out.shape
  assert got.shape == (length, batch, batch)
  for l in range(length):
    for b in range(batch):
      for m in range(batch):
        want = np.dot(seq_out[b, l].astype(np.float64), ids_emb[m, l]) - hot_weight[m, l]
        assert math.isclose(got[l, b, m], want, rel_tol=1e-5, abs_tol=1e-5), (l, b, m)


@settings(deadline=None, max_examples=20)
@given(loss_inputs(), st.integers(0, 2**32 - 1))
def test_loss_invariant_to_permuting_rows(case, seed):
  perm = np.random.default_rng(seed).permutation(case[0].shape[0])
  permuted = tuple(a[perm] for a in case)
  assert math.isclose(_jitted_loss(*case), _jitted_loss(*permuted), rel_tol=1e-6, abs_tol=1e-6)


@settings(deadline=None, max_examples=20)
@given(loss_inputs(), st.floats(-12.0, -0.1))
def test_equal_logq_weights_equal_no_correction(case, weight):
  seq_out, ids_emb, _, padding_mask = case
  constant = np.full(padding_mask.shape, weight, np.float32)
  zero = np.zeros_like(constant)
  got = _jitted_loss(seq_out, ids_emb, constant, padding_mask)
  want = _jitted_loss(seq_out, ids_emb, zero, padding_mask)
  assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5)
  assert math.isclose(want, naive_loss(seq_out, ids_emb, zero, padding_mask),
                      rel_tol=1e-5, abs_tol=1e-5)


@settings(deadline=None, max_examples=20)
@given(loss_inputs(), st.integers(0, 2**32 - 1))
def test_masked_rows_change_nothing(case, seed):
  """Rows with row_mask 0 (batch padding to a device multiple) are neither counted nor negatives."""
  rng = np.random.default_rng(seed)
  batch, length, hidden = case[0].shape
  extra = 2
  junk = (rng.normal(size=(extra, length, hidden)).astype(np.float32),
          rng.normal(scale=3.0, size=(extra, length, hidden)).astype(np.float32),
          np.log(rng.uniform(1e-4, 0.5, (extra, length))).astype(np.float32),
          rng.integers(0, 2, (extra, length)).astype(np.float32))
  padded = tuple(np.concatenate([a, j]) for a, j in zip(case, junk))
  row_mask = np.concatenate([np.ones(batch), np.zeros(extra)]).astype(np.float32)
  want = naive_loss(*case)
  for got in (_loss_with_and_without_jit(*padded, row_mask)
              + _loss_with_and_without_jit(*case, np.ones(batch, np.float32))):
    assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5), (got, want)


@settings(deadline=None, max_examples=10)
@given(loss_inputs(), st.booleans())
def test_gradient_matches_central_differences_in_float64(case, with_row_mask):
  """Checks every input's gradient against (f(x + h) - f(x - h)) / 2h, all in float64.

  `jax.enable_x64` is a context manager here, so x64 stays off for the other tests.
  """
  batch = case[0].shape[0]
  row_mask = np.ones(batch) if with_row_mask else None
  if with_row_mask and batch > 1:
    row_mask[-1] = 0.0
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in case[:3]]
    mask = jnp.asarray(case[3], jnp.float64)
    rm = None if row_mask is None else jnp.asarray(row_mask, jnp.float64)
    fn = jax.jit(lambda o, e, w: loss.in_batch_softmax_loss(o, e, w, mask, rm))
    assert fn(*args).dtype == jnp.float64
    grads = jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(*args)
    h = 1e-6
    for i, (x, g) in enumerate(zip(args, grads)):
      x = np.asarray(x)
      numeric = np.zeros_like(x)
      for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = h
        plus = [a if j != i else jnp.asarray(x + step) for j, a in enumerate(args)]
        minus = [a if j != i else jnp.asarray(x - step) for j, a in enumerate(args)]
        numeric[idx] = (float(fn(*plus)) - float(fn(*minus))) / (2 * h)
      np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-6, atol=1e-8, err_msg=f"arg {i}")
  assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak out of the context


def test_hot_weight_sign_hand_computed():
  """B=2, L=1, D=1: logits row 0 = [1*1 - w0, 1*2 - w1]; loss = lse - own logit."""
  seq_out = np.array([[[1.0]], [[0.0]]], np.float32)
  ids_emb = np.array([[[1.0]], [[2.0]]], np.float32)
  hot_weight = np.array([[-1.0], [-3.0]], np.float32)
  padding_mask = np.array([[1.0], [0.0]], np.float32)
  logits = np.array([1.0 + 1.0, 2.0 + 3.0])
  want = np.log(np.exp(logits).sum()) - logits[0]
  got = float(loss.in_batch_softmax_loss(seq_out, ids_emb, hot_weight, padding_mask))
  assert math.isclose(got, want, rel_tol=1e-6)
