"""The in-batch softmax loss over the "lbm" logits, with logQ correction (SPEC section 5).

Shape key: B batch rows (and M = B candidate rows), L sequence length, D hidden size.
"""

import jax
import jax.numpy as jnp

_EXCLUDED = -1e30  # a logit that exp() turns into exactly 0


def lbm_logits(out_LxBxD, ids_emb_LxMxD, hot_weight_MxL) -> jnp.ndarray:
  """[L, B, M]: row b's output at position l against row m's label at l, minus w[m, l]:
  the SPEC's einsum("bld,mld->lbm"), on position-major inputs (any subset of rows b)."""
  logits_LxBxM = jnp.einsum("lbd,lmd->lbm", out_LxBxD, ids_emb_LxMxD)
  return logits_LxBxM - jnp.transpose(hot_weight_MxL)[:, None, :]


def in_batch_softmax_loss(seq_out_BxLxD, ids_emb_BxLxD, hot_weight_BxL, padding_mask_BxL,
                          row_mask_B=None, label_BxL=None, remove_accidental_hits=False,
                          extra_emb_NxD=None, extra_ids_N=None, extra_log_q_N=None,
                          pos_log_q_BxL=None, levels=None) -> jnp.ndarray:
  """Mean over real (row, position) slots of -log softmax(logits)[own label].

  `padding_mask_BxL` is 1 where the row has a real input item: only those slots count.
  Padded slots still serve as negatives of the other rows. `row_mask_B` (optional) is
  0 for rows that only pad the batch to a device multiple: they are neither counted
  nor candidates, so the loss equals that of the unpadded batch.

  `levels` computes the logits only where they count: a tuple of (lo, hi, rows_GxC), the
  positions lo:hi scored only for the rows listed (per group of B / G rows, indices
  within the group, -1 unused), or for every row where rows_GxC is None. The levels
  must cover every real slot once (packing.loss_levels); the candidates are still
  every row's label at each position. Without `levels`: one level, every row and position.

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
  rows, length = padding_mask_BxL.shape
  mask_BxL = padding_mask_BxL if row_mask_B is None else padding_mask_BxL * row_mask_B[:, None]
  # A candidate row that only pads the batch gets logit -1e30 through its logQ weight.
  weight_BxL = hot_weight_BxL if row_mask_B is None else jnp.where(row_mask_B[:, None] > 0, hot_weight_BxL,
                                                                   -_EXCLUDED)
  # Position-major copies: each level's slices are then contiguous [W, rows, D] blocks.
  seq_out_LxBxD, ids_emb_LxBxD = (jnp.transpose(x, (1, 0, 2)) for x in (seq_out_BxLxD, ids_emb_BxLxD))
  total = 0.0
  for lo, hi, rows_GxC in levels or ((0, length, None),):
    if rows_GxC is None:
      rows_C, valid_C = jnp.arange(rows), None
      take = lambda x_BxL: x_BxL[:, lo:hi]
      queries_WxCxD, own_emb_WxCxD = seq_out_LxBxD[lo:hi], ids_emb_LxBxD[lo:hi]
    else:
      groups, capacity = rows_GxC.shape
      offset_Gx1 = (jnp.arange(groups) * (rows // groups))[:, None]
      rows_C = (jnp.maximum(rows_GxC, 0) + offset_Gx1).reshape(groups * capacity)
      valid_C = (rows_GxC >= 0).reshape(-1)
      take = lambda x_BxL: x_BxL[rows_C, lo:hi]
      queries_WxCxD, own_emb_WxCxD = seq_out_LxBxD[lo:hi, rows_C], ids_emb_LxBxD[lo:hi, rows_C]
    nll_WxC = _slot_nll(
        queries_WxCxD, rows_C, ids_emb_LxBxD[lo:hi], weight_BxL[:, lo:hi], own_emb_WxCxD, take(hot_weight_BxL),
        None if label_BxL is None else (take(label_BxL), label_BxL[:, lo:hi]), remove_accidental_hits,
        extra_emb_NxD, extra_ids_N, extra_log_q_N, None if pos_log_q_BxL is None else take(pos_log_q_BxL))
    mask_WxC = jnp.transpose(take(mask_BxL))
    if valid_C is not None:
      mask_WxC = mask_WxC * valid_C[None, :]
    total = total + jnp.sum(jnp.where(mask_WxC > 0, nll_WxC, 0.0))
  return total / jnp.maximum(jnp.sum(mask_BxL), 1.0)


def _slot_nll(out_WxCxD, rows_C, ids_emb_WxMxD, weight_MxW, own_emb_WxCxD, own_weight_CxW, labels,
              remove_accidental_hits, extra_emb_NxD, extra_ids_N, extra_log_q_N, pos_log_q_CxW) -> jnp.ndarray:
  """[W, C]: the loss of query rows `rows_C` (outputs out_WxCxD) at W positions against the
  M = B candidates of those positions: the SPEC's einsum("bld,mld->lbm") restricted to
  those rows and positions, minus each candidate's logQ weight w[m, l] (-1e30 for rows
  that only pad the batch). own_emb / own_weight: the query rows' own labels and weights;
  `labels`: (own [C, W], all [M, W]); pos_log_q_CxW: log q of the own labels."""
  logits_WxCxM = lbm_logits(out_WxCxD, ids_emb_WxMxD, weight_MxW)
  # The positive: the own column's logit, as a W x C dot rather than a pass over M.
  pos_WxC = jnp.sum(out_WxCxD * own_emb_WxCxD, axis=-1) - jnp.transpose(own_weight_CxW)
  own_CxM = None
  if remove_accidental_hits or pos_log_q_CxW is not None:
    own_CxM = rows_C[:, None] == jnp.arange(ids_emb_WxMxD.shape[1])[None, :]
  if remove_accidental_hits:
    own_label_WxC, label_WxM = jnp.transpose(labels[0]), jnp.transpose(labels[1])
    same_WxCxM = own_label_WxC[:, :, None] == label_WxM[:, None, :]
    logits_WxCxM = jnp.where(same_WxCxM & ~own_CxM[None], _EXCLUDED, logits_WxCxM)
  if extra_emb_NxD is not None:
    extra_WxCxN = jnp.einsum("wcd,nd->wcn", out_WxCxD, extra_emb_NxD) - extra_log_q_N[None, None, :]
    if remove_accidental_hits:
      hit_WxCxN = jnp.transpose(labels[0])[:, :, None] == extra_ids_N[None, None, :]
      extra_WxCxN = jnp.where(hit_WxCxN, _EXCLUDED, extra_WxCxN)
    logits_WxCxM = jnp.concatenate([logits_WxCxM, extra_WxCxN], axis=-1)
  if pos_log_q_CxW is not None:
    log_q_WxC = jnp.transpose(pos_log_q_CxW)
    uncorrected_WxC = pos_WxC + jnp.transpose(own_weight_CxW)
    negatives_WxCxM = logits_WxCxM + jnp.log1p(-jnp.exp(log_q_WxC))[:, :, None]
    own_WxCxM = jnp.pad(own_CxM, ((0, 0), (0, logits_WxCxM.shape[-1] - own_CxM.shape[1])))[None]
    logits_WxCxM = jnp.where(own_WxCxM, uncorrected_WxC[:, :, None], negatives_WxCxM)
    pos_WxC = uncorrected_WxC
  nll_WxC = jax.nn.logsumexp(logits_WxCxM, axis=-1) - pos_WxC
  if pos_log_q_CxW is not None:
    nll_WxC = nll_WxC * jax.lax.stop_gradient(-jnp.expm1(-nll_WxC))  # (1 - p_pos) nll
  return nll_WxC


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
  # Item 0 (padding) is left out by slicing the table, not by overwriting a logits column:
  # the [T, I] write and its gradient cost 20-25% of this loss (BENCHMARKS.md).
  logits_TxI = jnp.einsum("td,id->ti", out_TxD, table_IxD[1:])
  # The target and the smoothing mean are O(T * D) dot products rather than reads of the
  # [T, I] logits, whose gradient would then carry an extra [T, I] scatter and slice.
  target_T = jnp.sum(out_TxD * jnp.take(table_IxD, label_T, axis=0), axis=-1)
  if label_smoothing:
    mean_T = out_TxD @ jnp.mean(table_IxD[1:], axis=0)
    target_T = (1.0 - label_smoothing) * target_T + label_smoothing * mean_T
  nll_T = jax.nn.logsumexp(logits_TxI, axis=-1) - target_T
  return jnp.sum(jnp.where(mask_T > 0, nll_T, 0.0)) / jnp.maximum(count, 1)
