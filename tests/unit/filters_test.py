"""Tests for jaxrec.filters against a per-row, per-position float64 loop.

Shape key: B batch, L sequence length, D hidden size.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import filters

jax.config.update("jax_numpy_rank_promotion", "raise")

# A few fixed sizes keep the number of compiled shapes small.
BATCH = (1, 3)
LENGTH = (1, 6)
HIDDEN = 4


def naive_lowpass(x_BxLxD, real_BxL, gamma_D):
  """y[b, t, d] = sum over real s <= t of (1 - g[d]) g[d]^(t - s) x[b, s, d], one term at a time."""
  x, gamma = np.asarray(x_BxLxD, np.float64), np.asarray(gamma_D, np.float64)
  batch, length, hidden = x.shape
  y = np.zeros((batch, length, hidden))
  for b in range(batch):
    for t in range(length):
      for s in range(t + 1):
        if real_BxL[b, s]:
          for d in range(hidden):
            y[b, t, d] += (1.0 - gamma[d]) * gamma[d] ** (t - s) * x[b, s, d]
  return y


@st.composite
def filter_inputs(draw):
  """x [B, L, D] float32, a real mask of left padding (with holes: the filter is defined
  per position), gamma [D] in (0, 1) with one channel near each end."""
  batch, length = draw(st.sampled_from(BATCH)), draw(st.sampled_from(LENGTH))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  x = rng.normal(size=(batch, length, HIDDEN)).astype(np.float32)
  num_pad_B = rng.integers(0, length, batch)
  real = np.arange(length)[None, :] >= num_pad_B[:, None]
  if draw(st.booleans()):
    real &= rng.random((batch, length)) < 0.7
  gamma = np.concatenate([[0.05, 0.95], rng.uniform(0.1, 0.9, HIDDEN - 2)]).astype(np.float32)
  return x, real, gamma


@settings(deadline=None, max_examples=25)
@given(filter_inputs())
def test_causal_lowpass_matches_loop_reference(case):
  x, real, gamma = case
  want = naive_lowpass(x, real, gamma)
  jitted = jax.jit(filters.causal_lowpass)(x, real, gamma)
  with jax.disable_jit():
    eager = filters.causal_lowpass(x, real, gamma)
  for got in (jitted, eager):
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_an_impulse_decays_geometrically_and_never_reaches_back():
  """x = 1 at one position, 0 elsewhere: y = (1 - g) g^k k steps after it, exactly 0 before."""
  length, at = 7, 2
  gamma = np.array([0.5, 0.25], np.float32)
  x = np.zeros((1, length, 2), np.float32)
  x[0, at] = 1.0
  got = np.asarray(filters.causal_lowpass(x, np.ones((1, length), bool), gamma))
  for t in range(length):
    want = (1.0 - gamma) * gamma ** (t - at) if t >= at else np.zeros(2)
    np.testing.assert_allclose(got[0, t], want, rtol=1e-6, atol=0.0)


def test_no_gradient_flows_to_later_positions():
  """d y[t] / d x[s] is exactly 0 for every s > t (no leak, not even by rounding)."""
  rng = np.random.default_rng(0)
  length = 6
  x = rng.normal(size=(1, length, 3)).astype(np.float32)
  gamma = np.array([0.3, 0.6, 0.9], np.float32)
  jacobian = np.asarray(jax.jacobian(
      lambda v: filters.causal_lowpass(v, jnp.ones((1, length), bool), gamma))(x))  # [1, L, D, 1, L, D]
  for t in range(length):
    assert not jacobian[0, t, :, 0, t + 1:, :].any()
    for d in range(3):  # ... while every earlier position of the same channel counts
      assert np.abs(jacobian[0, t, d, 0, :t + 1, d]).min() > 0
