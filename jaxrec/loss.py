"""The in-batch softmax loss over the "lbm" logits, with logQ correction (SPEC section 5).

Shape key: B batch rows (and M = B candidate rows), L sequence length, D hidden size.
"""

import jax
import jax.numpy as jnp

_EXCLUDED = -1e30  # a logit that exp() turns into exactly 0


def lbm_logits(seq_out_BxLxD, ids_emb_BxLxD, hot_weight_BxL) -> jnp.ndarray:
  """[L, B, M]: row b's output at position l against row m's label at l, minus w[m, l]."""
  logits_LxBxM = jnp.einsum("bld,mld->lbm", seq_out_BxLxD, ids_emb_BxLxD)
  return logits_LxBxM - jnp.transpose(hot_weight_BxL)[:, None, :]


def in_batch_softmax_loss(seq_out_BxLxD, ids_emb_BxLxD, hot_weight_BxL, padding_mask_BxL,
                          row_mask_B=None) -> jnp.ndarray:
  """Mean over real (row, position) slots of -log softmax(logits)[own label].

  `padding_mask_BxL` is 1 where the row has a real input item: only those slots count.
  Padded slots still serve as negatives of the other rows. `row_mask_B` (optional) is
  0 for rows that only pad the batch to a device multiple: they are neither counted
  nor candidates, so the loss equals that of the unpadded batch.
  """
  logits_LxBxM = lbm_logits(seq_out_BxLxD, ids_emb_BxLxD, hot_weight_BxL)
  mask_LxB = jnp.transpose(padding_mask_BxL)
  if row_mask_B is not None:
    logits_LxBxM = jnp.where(row_mask_B[None, None, :] > 0, logits_LxBxM, _EXCLUDED)
    mask_LxB = mask_LxB * row_mask_B[None, :]
  pos_LxB = jnp.diagonal(logits_LxBxM, axis1=1, axis2=2)
  lse_LxB = jax.nn.logsumexp(logits_LxBxM, axis=-1)
  total = jnp.sum(jnp.where(mask_LxB > 0, lse_LxB - pos_LxB, 0.0))
  return total / jnp.maximum(jnp.sum(mask_LxB), 1.0)
