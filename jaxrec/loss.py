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
                          row_mask_B=None, label_BxL=None, remove_accidental_hits=False,
                          extra_emb_NxD=None, extra_ids_N=None, extra_log_q_N=None,
                          pos_log_q_BxL=None) -> jnp.ndarray:
  """Mean over real (row, position) slots of -log softmax(logits)[own label].

  `padding_mask_BxL` is 1 where the row has a real input item: only those slots count.
  Padded slots still serve as negatives of the other rows. `row_mask_B` (optional) is
  0 for rows that only pad the batch to a device multiple: they are neither counted
  nor candidates, so the loss equals that of the unpadded batch.

  Extensions (off by default, which is exactly SPEC section 5):
  - `remove_accidental_hits` (needs `label_BxL` and `extra_ids_N` if extras are given):
    a candidate whose item equals the row's own label at that position is dropped;
  - `extra_emb_NxD`/`extra_ids_N`/`extra_log_q_N`: N sampled items shared by the whole
    batch, appended as candidates with their own logQ term (mixed negative sampling);
  - `pos_log_q_BxL`: the corrected logQ of Khrylchenko et al. (RecSys 2025), given log q
    of each slot's own label (q = count / total). The positive logit is not corrected;
    each negative's correction becomes log(q_j / (1 - q_pos)), i.e. its logit gains
    log(1 - q_pos); each slot's loss is weighted by 1 - p_pos, p_pos the softmax
    probability of the positive, with no gradient through the weight.
  """
  logits_LxBxM = lbm_logits(seq_out_BxLxD, ids_emb_BxLxD, hot_weight_BxL)
  mask_LxB = jnp.transpose(padding_mask_BxL)
  keep_LxBxM = jnp.ones(logits_LxBxM.shape, bool)
  if row_mask_B is not None:
    keep_LxBxM = keep_LxBxM & (row_mask_B[None, None, :] > 0)
    mask_LxB = mask_LxB * row_mask_B[None, :]
  if remove_accidental_hits:
    label_LxB = jnp.transpose(label_BxL)
    same_LxBxM = label_LxB[:, :, None] == label_LxB[:, None, :]
    keep_LxBxM = keep_LxBxM & (~same_LxBxM | jnp.eye(label_LxB.shape[1], dtype=bool)[None])
  logits_LxBxM = jnp.where(keep_LxBxM, logits_LxBxM, _EXCLUDED)
  pos_LxB = jnp.diagonal(logits_LxBxM, axis1=1, axis2=2)
  if extra_emb_NxD is not None:
    extra_LxBxN = jnp.einsum("bld,nd->lbn", seq_out_BxLxD, extra_emb_NxD) - extra_log_q_N[None, None, :]
    if remove_accidental_hits:
      hit_LxBxN = jnp.transpose(label_BxL)[:, :, None] == extra_ids_N[None, None, :]
      extra_LxBxN = jnp.where(hit_LxBxN, _EXCLUDED, extra_LxBxN)
    logits_LxBxM = jnp.concatenate([logits_LxBxM, extra_LxBxN], axis=-1)
  if pos_log_q_BxL is not None:
    log_q_LxB = jnp.transpose(pos_log_q_BxL)
    pos_LxB = pos_LxB + jnp.transpose(hot_weight_BxL)  # the positive, uncorrected
    negatives_LxBxM = logits_LxBxM + jnp.log1p(-jnp.exp(log_q_LxB))[:, :, None]
    own_LxBxM = jnp.eye(logits_LxBxM.shape[1], logits_LxBxM.shape[2], dtype=bool)[None]
    logits_LxBxM = jnp.where(own_LxBxM, pos_LxB[:, :, None], negatives_LxBxM)
  lse_LxB = jax.nn.logsumexp(logits_LxBxM, axis=-1)
  nll_LxB = lse_LxB - pos_LxB
  if pos_log_q_BxL is not None:
    nll_LxB = nll_LxB * jax.lax.stop_gradient(-jnp.expm1(-nll_LxB))  # (1 - p_pos) nll
  total = jnp.sum(jnp.where(mask_LxB > 0, nll_LxB, 0.0))
  return total / jnp.maximum(jnp.sum(mask_LxB), 1.0)


def full_softmax_loss(seq_out_BxLxD, table_IxD, label_BxL, padding_mask_BxL, row_mask_B=None,
                      slots_GxC=None, label_smoothing: float = 0.0) -> jnp.ndarray:
  """Mean over real slots of -log softmax over the whole catalog (item 0 excluded) [own label].

  Exact cross-entropy, no sampling and no logQ; costs (scored slots) * I * D per step, so
  only for catalogs that fit. `slots_GxC` (data.real_slots) scores only the real slots
  instead of all B * L (padding is most of a batch of real logs): for each of G groups of
  B / G rows, the flat indices of its real slots within the group, -1 after them. Each
  group gathers from its own rows, so with one group per device scoring stays local.

  `label_smoothing` eps: the target is (1 - eps) on the own label plus eps spread evenly
  over the I - 1 real items, so a slot's loss is lse - (1 - eps) pos - eps mean(logits).
  """
  mask_BxL = padding_mask_BxL if row_mask_B is None else padding_mask_BxL * row_mask_B[:, None]
  count = jnp.sum(mask_BxL > 0)
  if slots_GxC is None:
    out_TxD, label_T, mask_T = (seq_out_BxLxD.reshape(-1, seq_out_BxLxD.shape[-1]), label_BxL.reshape(-1),
                                mask_BxL.reshape(-1))
  else:
    groups, d = slots_GxC.shape[0], seq_out_BxLxD.shape[-1]
    index_GxC = jnp.maximum(slots_GxC, 0)
    out_GxTxD = seq_out_BxLxD.reshape(groups, -1, d)
    out_TxD = jnp.take_along_axis(out_GxTxD, index_GxC[..., None], axis=1).reshape(-1, d)
    label_T = jnp.take_along_axis(label_BxL.reshape(groups, -1), index_GxC, axis=1).reshape(-1)
    mask_T = (slots_GxC >= 0).reshape(-1)
  logits_TxI = jnp.einsum("td,id->ti", out_TxD, table_IxD)
  # The target and the smoothing mean are O(T * D) dot products rather than reads of the
  # [T, I] logits, whose gradient would then carry an extra [T, I] scatter and slice.
  target_T = jnp.sum(out_TxD * jnp.take(table_IxD, label_T, axis=0), axis=-1)
  if label_smoothing:
    mean_T = out_TxD @ jnp.mean(table_IxD[1:], axis=0)
    target_T = (1.0 - label_smoothing) * target_T + label_smoothing * mean_T
  logits_TxI = logits_TxI.at[:, 0].set(_EXCLUDED)
  nll_T = jax.nn.logsumexp(logits_TxI, axis=-1) - target_T
  return jnp.sum(jnp.where(mask_T > 0, nll_T, 0.0)) / jnp.maximum(count, 1)
