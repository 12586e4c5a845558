"""Attention masks and bias (SPEC section 4).

Shape key: B batch, L sequence length.
"""

import jax.numpy as jnp

ATTENTION_BIAS = -10000.0


def subsequent_mask(length: int) -> jnp.ndarray:
  """[1, 1, L, L] float: 1 on and below the diagonal (query t sees keys <= t), 0 above."""
  return jnp.tril(jnp.ones((length, length), jnp.float32))[None, None]


def padding_mask(input_ids_BxL: jnp.ndarray) -> jnp.ndarray:
  """[B, L] float: 1 for real items, 0 for padding (id 0)."""
  return (input_ids_BxL != 0).astype(jnp.float32)


def attention_bias(input_ids_BxL: jnp.ndarray) -> jnp.ndarray:
  """[B, 1, L, L]: 0 where attention is allowed, -10000 where it is not.

  mask = padding_mask (broadcast as keys, [B, 1, 1, L]) * subsequent_mask [1, 1, L, L].
  """
  mask_Bx1xLxL = padding_mask(input_ids_BxL)[:, None, None, :] * subsequent_mask(input_ids_BxL.shape[1])
  return (1.0 - mask_Bx1xLxL) * ATTENTION_BIAS


def segment_attention_bias(segments_BxL: jnp.ndarray) -> jnp.ndarray:
  """[B, 1, L, L] for packed rows (several users per row, `segments` 1, 2, ... per user, 0 on
  padding): 0 where key k is real, in query q's segment and k <= q; -10000 elsewhere.

  A block-diagonal attention_bias: with one left-padded segment per row it is exactly
  attention_bias, and no position ever attends to another user's items.
  """
  same_Bx1xLxL = (segments_BxL[:, None, :, None] == segments_BxL[:, None, None, :])
  real_Bx1x1xL = (segments_BxL != 0)[:, None, None, :]
  mask_Bx1xLxL = (same_Bx1xLxL & real_Bx1x1xL).astype(jnp.float32) * subsequent_mask(segments_BxL.shape[1])
  return (1.0 - mask_Bx1xLxL) * ATTENTION_BIAS
