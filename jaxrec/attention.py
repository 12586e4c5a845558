"""Multi-head scaled dot-product attention (SPEC section 3, steps 2-6).

Shape key: B batch, L sequence length, D hidden size, H heads, K = D / H head size.
"""

import jax
import jax.numpy as jnp


def split_heads(x_BxLxD: jnp.ndarray, num_heads: int) -> jnp.ndarray:
  """[B, L, D] -> [B, H, L, K]."""
  b, l, d = x_BxLxD.shape
  return x_BxLxD.reshape(b, l, num_heads, d // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x_BxHxLxK: jnp.ndarray) -> jnp.ndarray:
  """[B, H, L, K] -> [B, L, D]."""
  b, h, l, k = x_BxHxLxK.shape
  return x_BxHxLxK.transpose(0, 2, 1, 3).reshape(b, l, h * k)


def multi_head_attention(q_BxLxD, k_BxLxD, v_BxLxD, bias_Bx1xLxL, num_heads: int,
                         dropout_rate: float = 0.0, dropout_rng=None) -> jnp.ndarray:
  """softmax(q k^T / sqrt(K) + bias) v per head, heads merged back: [B, L, D].

  With `dropout_rng` set and `dropout_rate` > 0, dropout is applied to the
  attention probabilities (inverted scaling, as nn.Dropout does).
  """
  d = q_BxLxD.shape[-1]  # divisible by num_heads: ModelConfig checks it
  q, k, v = (split_heads(t, num_heads) for t in (q_BxLxD, k_BxLxD, v_BxLxD))
  scores_BxHxLxL = jnp.einsum("bhqk,bhtk->bhqt", q, k) / jnp.sqrt(jnp.float32(d // num_heads))
  probs_BxHxLxL = jax.nn.softmax(scores_BxHxLxL + bias_Bx1xLxL, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxHxLxL.shape)
    probs_BxHxLxL = jnp.where(keep, probs_BxHxLxL / (1.0 - dropout_rate), 0.0)
  return merge_heads(jnp.einsum("bhqt,bhtk->bhqk", probs_BxHxLxL, v))
