"""The loss extensions (accidental-hit removal, mixed negatives, full softmax) against loops."""

import math

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import loss

jax.config.update("jax_numpy_rank_promotion", "raise")

B, L, D, N, I = 4, 3, 5, 3, 6


@st.composite
def inputs(draw):
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  out = rng.normal(size=(B, L, D)).astype(np.float32)
  table = rng.normal(size=(I, D)).astype(np.float32)
  label = rng.integers(1, 4, (B, L)).astype(np.int32)  # few items: accidental hits are common
  weight = np.log(rng.uniform(1e-3, 0.5, (B, L))).astype(np.float32)
  num_pad = rng.integers(0, L, B)
  mask = (np.arange(L)[None, :] >= num_pad[:, None]).astype(np.float32)
  row_mask = np.array([1, 1, 1, draw(st.sampled_from([0, 1]))], np.float32)
  extra_ids = rng.integers(1, I, N).astype(np.int32)
  extra_log_q = np.log(rng.uniform(1e-3, 0.5, N)).astype(np.float32)
  return out, table, label, weight, mask, row_mask, extra_ids, extra_log_q


def naive(out, table, label, weight, mask, row_mask, extra_ids=None, extra_log_q=None, hits=False):
  """Double loop: -log softmax over the kept in-batch (and extra) candidates, float64."""
  out, table, weight = (np.asarray(a, np.float64) for a in (out, table, weight))
  total, count = 0.0, 0
  for b in range(B):
    for l in range(L):
      if not (mask[b, l] and row_mask[b]):
        continue
      pos = out[b, l] @ table[label[b, l]] - weight[b, l]
      logits = [pos]
      for m in range(B):
        if m == b or not row_mask[m] or (hits and label[m, l] == label[b, l]):
          continue
        logits.append(out[b, l] @ table[label[m, l]] - weight[m, l])
      if extra_ids is not None:
        for n, item in enumerate(extra_ids):
          if not (hits and item == label[b, l]):
            logits.append(out[b, l] @ table[item] - extra_log_q[n])
      top = max(logits)
      total += top + math.log(sum(math.exp(x - top) for x in logits)) - pos
      count += 1
  return total / count


@settings(deadline=None, max_examples=25)
@given(inputs(), st.booleans(), st.booleans())
def test_in_batch_variants_equal_loops(args, hits, mixed):
  out, table, label, weight, mask, row_mask, extra_ids, extra_log_q = args
  extra = {}
  if mixed:
    extra = {"extra_emb_NxD": table[extra_ids], "extra_ids_N": extra_ids, "extra_log_q_N": extra_log_q}
  got = loss.in_batch_softmax_loss(out, table[label], weight, mask, row_mask, label, hits, **extra)
  want = naive(out, table, label, weight, mask, row_mask, extra_ids if mixed else None,
               extra_log_q if mixed else None, hits)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-5)


@settings(deadline=None, max_examples=20)
@given(inputs())
def test_full_softmax_equals_loop(args):
  out, table, label, _, mask, row_mask, _, _ = args
  got = loss.full_softmax_loss(out, table, label, mask, row_mask)
  out64, table64 = out.astype(np.float64), table.astype(np.float64)
  total, count = 0.0, 0
  for b in range(B):
    for l in range(L):
      if mask[b, l] and row_mask[b]:
        logits = [out64[b, l] @ table64[i] for i in range(1, I)]  # padding item 0 is no candidate
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[label[b, l] - 1]
        count += 1
  np.testing.assert_allclose(float(got), total / count, rtol=2e-5, atol=2e-5)


def test_no_hits_to_remove_changes_nothing():
  rng = np.random.default_rng(0)
  out = rng.normal(size=(B, L, D)).astype(np.float32)
  emb = rng.normal(size=(B, L, D)).astype(np.float32)
  weight = np.zeros((B, L), np.float32)
  mask = np.ones((B, L), np.float32)
  label = np.arange(B * L, dtype=np.int32).reshape(B, L) + 1  # all distinct
  plain = loss.in_batch_softmax_loss(out, emb, weight, mask)
  removed = loss.in_batch_softmax_loss(out, emb, weight, mask, None, label, True)
  np.testing.assert_allclose(float(plain), float(removed), rtol=1e-6)
