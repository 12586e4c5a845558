"""Tests for jaxrec.attention against a per-head, per-position float64 loop (SPEC section 3).

Shape key: B batch, L sequence length, D hidden size, H heads, K = D / H head size.
"""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import attention
from jaxrec import masks

jax.config.update("jax_numpy_rank_promotion", "raise")

# A few fixed sizes keep the number of compiled shapes small.
BATCH = (1, 3)
LENGTH = (1, 6)
HIDDEN = 8
HEADS = (1, 2, 4)


@st.composite
def attention_inputs(draw):
  """q, k, v [B, L, D] float32, the causal/padding bias of random left-padded ids, heads."""
  batch, length = draw(st.sampled_from(BATCH)), draw(st.sampled_from(LENGTH))
  heads = draw(st.sampled_from(HEADS))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  scale = draw(st.sampled_from((0.3, 1.0, 3.0)))  # 3.0: peaked softmax
  q, k, v = (rng.normal(scale=scale, size=(batch, length, HIDDEN)).astype(np.float32)
             for _ in range(3))
  ids_BxL = rng.integers(1, 9, (batch, length)).astype(np.int32)
  num_pad_B = rng.integers(0, length, batch)
  ids_BxL[np.arange(length)[None, :] < num_pad_B[:, None]] = 0
  bias_Bx1xLxL = np.asarray(masks.attention_bias(ids_BxL))
  return q, k, v, bias_Bx1xLxL, heads


def naive_attention(q_BxLxD, k_BxLxD, v_BxLxD, bias_Bx1xLxL, num_heads):
  """Loops over rows, heads and query positions; float64 softmax with max subtraction."""
  q, k, v, bias = (np.asarray(a, np.float64) for a in (q_BxLxD, k_BxLxD, v_BxLxD, bias_Bx1xLxL))
  batch, length, hidden = q.shape
  size = hidden // num_heads
  out = np.zeros((batch, length, hidden), np.float64)
  for b in range(batch):
    for h in range(num_heads):
      cols = slice(h * size, (h + 1) * size)
      for i in range(length):
        scores = [float(np.dot(q[b, i, cols], k[b, j, cols])) / math.sqrt(size) + bias[b, 0, i, j]
                  for j in range(length)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        for j in range(length):
          out[b, i, cols] += weights[j] / total * v[b, j, cols]
  return out


@settings(deadline=None, max_examples=25)
@given(attention_inputs())
def test_multi_head_attention_matches_loop_reference(case):
  q, k, v, bias, heads = case
  want = naive_attention(q, k, v, bias, heads)
  # A query that sees some key (every real position) must match tightly: to a few float32
  # ulps of the largest value it averages (the reference sums in float64). A padded query
  # sees no key: all its scores carry -10000, where float32 spacing is 2^-10, so its
  # softmax weights are exact only to ~1e-3 relative (those outputs are never used).
  sees_some_key_BxL = np.any(bias[:, 0] == 0.0, axis=-1)
  jitted = jax.jit(attention.multi_head_attention, static_argnums=4)(q, k, v, bias, heads)
  with jax.disable_jit():
    eager = attention.multi_head_attention(q, k, v, bias, heads)
  for got in (jitted, eager):
    assert got.shape == q.shape and got.dtype == np.float32
    got = np.asarray(got)
    np.testing.assert_allclose(got[sees_some_key_BxL], want[sees_some_key_BxL], rtol=1e-5,
                               atol=2e-6 * max(1.0, np.abs(v).max()))
    np.testing.assert_allclose(got[~sees_some_key_BxL], want[~sees_some_key_BxL], rtol=0,
                               atol=2e-3 * np.abs(v).max())


@settings(deadline=None, max_examples=10)
@given(attention_inputs())
def test_split_and_merge_heads_invert_each_other(case):
  q, _, _, _, heads = case
  split = np.asarray(attention.split_heads(q, heads))
  batch, length, hidden = q.shape
  assert split.shape == (batch, heads, length, hidden // heads)
  size = hidden // heads
  for h in range(heads):  # head h holds columns h*K .. (h+1)*K - 1
    np.testing.assert_array_equal(split[:, h], q[:, :, h * size:(h + 1) * size])
  np.testing.assert_array_equal(np.asarray(attention.merge_heads(split)), q)


def test_zero_dropout_rate_or_no_key_is_no_dropout():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 6, HIDDEN)).astype(np.float32) for _ in range(3))
  bias = np.asarray(masks.attention_bias(np.array([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 1, 2]])))
  want = np.asarray(attention.multi_head_attention(q, k, v, bias, 2))
  key = jax.random.key(0)
  np.testing.assert_array_equal(
      np.asarray(attention.multi_head_attention(q, k, v, bias, 2, 0.0, key)), want)
  np.testing.assert_array_equal(
      np.asarray(attention.multi_head_attention(q, k, v, bias, 2, 0.5, None)), want)
  dropped = np.asarray(attention.multi_head_attention(q, k, v, bias, 2, 0.5, key))
  assert not np.allclose(dropped, want)


def test_indivisible_hidden_size_is_rejected():
  from jaxrec.errors import InputError
  from jaxrec.model import ModelConfig
  with pytest.raises(InputError, match="divisible"):
    ModelConfig(num_items=10, hidden_size=6, num_attention_heads=4)
