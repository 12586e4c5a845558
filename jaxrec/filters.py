"""Causal low-pass filtering over the sequence axis: the frequency-domain inductive bias of
BSARec (Shin et al., AAAI 2024), made causal and exact under left padding.

BSARec low-passes each channel with a global FFT, which mixes future positions into the
past. Here the low-pass is a causal exponential moving average per channel, whose impulse
response h[k] = (1 - g) g^k is the usual first-order low-pass. It is applied as its
lower-triangular Toeplitz matrix: mathematically the FFT convolution of x with h, but
with exact zeros above the diagonal, so an output never depends on a later position, not
even by rounding (an FFT would leak rounding error backwards), and gradients to the future
are exactly 0.

Shape key: B batch, L sequence length (S: the source position), D hidden size.
"""

import jax.numpy as jnp


def causal_lowpass(x_BxLxD, real_BxL, gamma_D):
  """y[b, t] = sum over real s <= t of (1 - g) g^(t - s) x[b, s], per channel (g = gamma_D).

  Padding positions contribute nothing; with left padding the offsets t - s between real
  positions do not depend on how much padding precedes them, so neither does y there.
  """
  length = x_BxLxD.shape[1]
  lag_LxS = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
  causal_LxSx1 = (lag_LxS >= 0)[..., None]
  lag_LxSx1 = jnp.maximum(lag_LxS, 0)[..., None].astype(x_BxLxD.dtype)
  gamma_1x1xD = gamma_D[None, None, :]
  weights_LxSxD = jnp.where(causal_LxSx1, (1.0 - gamma_1x1xD) * gamma_1x1xD ** lag_LxSx1, 0.0)
  x_BxLxD = jnp.where(real_BxL[..., None], x_BxLxD, 0.0)
  return jnp.einsum("tsd,bsd->btd", weights_LxSxD, x_BxLxD)
