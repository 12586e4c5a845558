"""Tests for jaxrec.masks against element-wise float64 definitions (SPEC section 4).

Shape key: B batch, L sequence length.
"""

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import masks

jax.config.update("jax_numpy_rank_promotion", "raise")

# A few fixed sizes keep the number of compiled shapes small.
BATCH = (1, 3)
LENGTH = (1, 5, 8)


@st.composite
def left_padded_ids(draw, holes=False):
  """[B, L] int32 ids, row b starts with a random 0..L-1 padding slots (id 0).

  With `holes`, zeros may also appear anywhere: the masks are defined element-wise.
  """
  batch, length = draw(st.sampled_from(BATCH)), draw(st.sampled_from(LENGTH))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  ids_BxL = rng.integers(1, 50, (batch, length)).astype(np.int32)
  num_pad_B = rng.integers(0, length, batch)
  ids_BxL[np.arange(length)[None, :] < num_pad_B[:, None]] = 0
  if holes:
    ids_BxL[rng.random((batch, length)) < 0.3] = 0
  return ids_BxL


def naive_attention_bias(ids_BxL):
  """bias[b, 0, q, k] = (1 - [ids[b, k] != 0] * [k <= q]) * -10000, one entry at a time."""
  batch, length = ids_BxL.shape
  bias = np.zeros((batch, 1, length, length), np.float64)
  for b in range(batch):
    for q in range(length):
      for k in range(length):
        allowed = float(ids_BxL[b, k] != 0) * float(k <= q)
        bias[b, 0, q, k] = (1.0 - allowed) * -10000.0
  return bias


def _with_and_without_jit(fn, *args):
  jitted = jax.jit(fn)(*args)
  with jax.disable_jit():
    eager = fn(*args)
  return np.asarray(jitted), np.asarray(eager)


@settings(deadline=None, max_examples=25)
@given(left_padded_ids(holes=True))
def test_attention_bias_matches_elementwise_definition(ids_BxL):
  want = naive_attention_bias(ids_BxL)
  for got in _with_and_without_jit(masks.attention_bias, ids_BxL):
    assert got.shape == ids_BxL.shape[:1] + (1,) + ids_BxL.shape[1:] * 2
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # 0 and -10000 are exact in float32


@settings(deadline=None, max_examples=10)
@given(left_padded_ids())
def test_left_padded_query_sees_only_real_keys_up_to_itself(ids_BxL):
  bias = np.asarray(masks.attention_bias(ids_BxL))
  for b in range(ids_BxL.shape[0]):
    first_real = int(np.argmax(ids_BxL[b] != 0))
    for q in range(first_real, ids_BxL.shape[1]):
      allowed = np.flatnonzero(bias[b, 0, q] == 0.0)
      np.testing.assert_array_equal(allowed, np.arange(first_real, q + 1))


@settings(deadline=None, max_examples=25)
@given(left_padded_ids(holes=True))
def test_padding_mask_values_and_shape(ids_BxL):
  want = np.array([[1.0 if i != 0 else 0.0 for i in row] for row in ids_BxL.tolist()])
  for got in _with_and_without_jit(masks.padding_mask, ids_BxL):
    assert got.shape == ids_BxL.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_subsequent_mask_values_and_shape():
  for length in LENGTH + (70,):
    got = np.asarray(masks.subsequent_mask(length))
    assert got.shape == (1, 1, length, length) and got.dtype == np.float32
    for q in range(length):
      for k in range(length):
        assert got[0, 0, q, k] == (1.0 if k <= q else 0.0), (length, q, k)


def test_attention_bias_constant_is_spec_value():
  assert masks.ATTENTION_BIAS == -10000.0
  ids_1x3 = np.array([[0, 4, 5]], np.int32)
  np.testing.assert_array_equal(
      np.asarray(masks.attention_bias(ids_1x3))[0, 0],
      [[-10000.0, -10000.0, -10000.0], [-10000.0, 0.0, -10000.0], [-10000.0, 0.0, 0.0]])


@st.composite
def packed_segments(draw):
  """[B, L] int32 segment numbers of packed rows: runs of 1, 2, ... in order, 0 on padding
  (before, between and after the runs)."""
  batch, length = draw(st.sampled_from(BATCH)), draw(st.sampled_from(LENGTH))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  segments_BxL = np.zeros((batch, length), np.int32)
  for b in range(batch):
    t, segment = int(rng.integers(0, 2)), 1
    while t < length:
      n = int(rng.integers(1, 4))
      segments_BxL[b, t:t + n] = segment
      t, segment = t + n + int(rng.integers(0, 2)), segment + 1
  return segments_BxL


def naive_segment_attention_bias(segments_BxL):
  """bias[b, 0, q, k] = 0 if key k is real, in q's segment and k <= q, else -10000."""
  batch, length = segments_BxL.shape
  bias = np.full((batch, 1, length, length), -10000.0)
  for b in range(batch):
    for q in range(length):
      for k in range(q + 1):
        if segments_BxL[b, k] != 0 and segments_BxL[b, k] == segments_BxL[b, q]:
          bias[b, 0, q, k] = 0.0
  return bias


@settings(deadline=None, max_examples=25)
@given(packed_segments())
def test_segment_attention_bias_matches_elementwise_definition(segments_BxL):
  want = naive_segment_attention_bias(segments_BxL)
  for got in _with_and_without_jit(masks.segment_attention_bias, segments_BxL):
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@settings(deadline=None, max_examples=10)
@given(left_padded_ids())
def test_one_segment_per_row_is_the_plain_attention_bias(ids_BxL):
  segments_BxL = (ids_BxL != 0).astype(np.int32)
  np.testing.assert_array_equal(np.asarray(masks.segment_attention_bias(segments_BxL)),
                                np.asarray(masks.attention_bias(ids_BxL)))
