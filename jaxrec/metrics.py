"""Full-ranking leave-one-out evaluation: target ranks, HR@K, NDCG@K, MRR.

Shape key:
  U: users (in one block)      I: items, row 0 is padding
  D: embedding size            H: history slots per user (0-padded)
  B: items per block           N: B + U columns of one block's score matrix

Candidates for a user are the items 1..I-1 minus the user's history; the target
is always a candidate. The rank of the target is the number of other candidates
scoring >= the target score (ties count against the target, so a constant model
never looks good). Ranks are counted block by block over the items, never
materialising a users x items matrix and never sorting.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_ITEM_BLOCK = 8192
DEFAULT_USER_BLOCK = 256


def padded_histories(indptr, indices, num_users=None, multiple=8):
  """CSR user -> items rows to a deduplicated, 0-padded [U, H] int32 array.

  Each row keeps its distinct items in increasing order. H is the longest
  deduplicated row rounded up to `multiple` (fewer distinct shapes to compile).
  Rows past len(indptr) - 1, up to `num_users`, are empty.
  """
  indptr = np.asarray(indptr, dtype=np.int64)
  indices = np.asarray(indices, dtype=np.int64)
  if indptr.ndim != 1 or indptr.size == 0 or indptr[0] != 0:
    raise ValueError("indptr must be 1-D and start at 0")
  if np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
    raise ValueError("indptr must be non-decreasing and end at len(indices)")
  if indices.size and indices.min() < 0:
    raise ValueError("history item ids must be >= 0")
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}")
  rows = indptr.size - 1
  num_users = rows if num_users is None else num_users
  if num_users < rows:
    raise ValueError(f"num_users={num_users} < {rows} CSR rows")

  row_of_entry = np.repeat(np.arange(rows), np.diff(indptr))
  order = np.lexsort((indices, row_of_entry))  # by row, then item
  row_sorted, item_sorted = row_of_entry[order], indices[order]
  first = np.ones(item_sorted.size, dtype=bool)
  first[1:] = (row_sorted[1:] != row_sorted[:-1]) | (item_sorted[1:] != item_sorted[:-1])
  row_kept, item_kept = row_sorted[first], item_sorted[first]

  lengths = np.bincount(row_kept, minlength=num_users)
  width = -(-int(lengths.max(initial=0)) // multiple) * multiple
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  slot = np.arange(item_kept.size) - starts[row_kept]
  history_UxH = np.zeros((num_users, width), dtype=np.int32)
  history_UxH[row_kept, slot] = item_kept
  return history_UxH


def _first_occurrence(history_UxH):
  """Sorted history and a mask of its first occurrences: repeats count once."""
  sorted_UxH = jnp.sort(history_UxH, axis=1)
  is_new_UxH = jnp.concatenate(
      [jnp.ones_like(sorted_UxH[:, :1], dtype=bool),
       sorted_UxH[:, 1:] != sorted_UxH[:, :-1]], axis=1)
  return sorted_UxH, is_new_UxH


def even_blocks(num_items: int, item_block: int) -> tuple[int, int]:
  """(number of blocks, block size): the fewest blocks of at most `item_block` items that
  cover `num_items`, all of one size (the last one may reach back over its neighbour)."""
  num_blocks = -(-num_items // min(item_block, num_items))
  return num_blocks, -(-num_items // num_blocks)


def target_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH, *,
                 item_block=DEFAULT_ITEM_BLOCK,
                 precision=jax.lax.Precision.HIGHEST):
  """0-based rank of each user's target among its candidates, int32 [U].

  rank = #{candidates j != target : score_j >= score_target}, with
  score = user_emb @ item_emb.T and candidates = items 1..I-1 not in the
  user's history (0-padded; repeats allowed) plus the target itself.
  Items are scanned in blocks of `item_block` rows, so memory is ~U x B.
  Inputs must be in range (targets in [1, I), history in [0, I)): nothing
  is checked here; `evaluate_ranks` checks on the host.
  """
  num_items = item_emb_IxD.shape[0]
  # Evenly sized blocks: the last one, slid back to end at I, then overlaps little.
  num_blocks, block = even_blocks(num_items, item_block)
  target_U = target_U.astype(jnp.int32)
  history_UxH = history_UxH.astype(jnp.int32)
  target_rows_UxD = item_emb_IxD[target_U]
  # Subtract each distinct history item once, never padding or the target.
  history_UxH, is_new_UxH = _first_occurrence(history_UxH)
  subtract_UxH = is_new_UxH & (history_UxH != 0) & (history_UxH != target_U[:, None])

  def count_block(b, count_U):
    # The last block is slid back to end at I; columns before `first` were
    # already counted by the previous block.
    first = b * block
    start = jnp.minimum(first, num_items - block)
    rows_BxD = jax.lax.dynamic_slice_in_dim(item_emb_IxD, start, block)
    # The target score comes out of the same matmul as the block's scores, so
    # equal vectors give bit-equal scores (a separate dot can differ by an ulp
    # and would let a constant model rank its targets first).
    rows_NxD = jnp.concatenate([rows_BxD, target_rows_UxD], axis=0)
    scores_UxN = jnp.dot(user_emb_UxD, rows_NxD.T, precision=precision,
                         preferred_element_type=jnp.float32)
    scores_UxB = scores_UxN[:, :block]
    target_score_U = jnp.diagonal(scores_UxN[:, block:])
    ids_B = start + jnp.arange(block, dtype=jnp.int32)
    counted_UxB = ((scores_UxB >= target_score_U[:, None])
                   & (ids_B >= first)[None, :] & (ids_B != 0)[None, :]
                   & (ids_B[None, :] != target_U[:, None]))
    count_U = count_U + jnp.sum(counted_UxB, axis=1, dtype=jnp.int32)
    if history_UxH.shape[1]:
      local_UxH = jnp.clip(history_UxH - start, 0, block - 1)
      history_scores_UxH = jnp.take_along_axis(scores_UxB, local_UxH, axis=1)
      in_block_UxH = (history_UxH >= first) & (history_UxH < start + block)
      seen_UxH = (subtract_UxH & in_block_UxH
                  & (history_scores_UxH >= target_score_U[:, None]))
      count_U = count_U - jnp.sum(seen_UxH, axis=1, dtype=jnp.int32)
    return count_U

  return jax.lax.fori_loop(0, num_blocks, count_block,
                           jnp.zeros(target_U.shape, jnp.int32))


_target_ranks_jit = jax.jit(target_ranks, static_argnames=("item_block", "precision"))


def evaluate_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH, *,
                   block_size=DEFAULT_USER_BLOCK, item_block=DEFAULT_ITEM_BLOCK,
                   precision=jax.lax.Precision.HIGHEST):
  """Host driver: `target_ranks` over user blocks of one fixed shape -> np int32 [U].

  The last block is padded (and its padding dropped), so there is exactly one
  compiled shape per (block_size, I, D, H, item_block).
  """
  user_emb_UxD = np.asarray(user_emb_UxD)
  item_emb_IxD = np.asarray(item_emb_IxD)
  target_U = np.asarray(target_U)
  history_UxH = np.asarray(history_UxH)
  num_users, dim = user_emb_UxD.shape
  num_items = item_emb_IxD.shape[0]
  if item_emb_IxD.ndim != 2 or item_emb_IxD.shape[1] != dim:
    raise ValueError(f"item_emb shape {item_emb_IxD.shape} does not match user dim {dim}")
  if target_U.shape != (num_users,) or history_UxH.ndim != 2 or history_UxH.shape[0] != num_users:
    raise ValueError(f"targets {target_U.shape} / histories {history_UxH.shape} "
                     f"do not match {num_users} users")
  if num_users and (target_U.min() < 1 or target_U.max() >= num_items):
    raise ValueError(f"targets must be item ids in [1, {num_items})")
  if history_UxH.size and (history_UxH.min() < 0 or history_UxH.max() >= num_items):
    raise ValueError(f"history ids must be in [0, {num_items})")
  if block_size < 1 or item_block < 1:
    raise ValueError("block_size and item_block must be >= 1")
  if num_users == 0:
    return np.zeros((0,), np.int32)

  padded = -(-num_users // block_size) * block_size
  pad = padded - num_users
  user_emb_UxD = np.pad(user_emb_UxD, ((0, pad), (0, 0)))
  target_U = np.pad(target_U.astype(np.int32), (0, pad), constant_values=1)
  history_UxH = np.pad(history_UxH.astype(np.int32), ((0, pad), (0, 0)))
  item_emb_IxD = jax.device_put(item_emb_IxD)
  rank_blocks = [
      _target_ranks_jit(user_emb_UxD[s:s + block_size], item_emb_IxD,
                        target_U[s:s + block_size], history_UxH[s:s + block_size],
                        item_block=item_block, precision=precision)
      for s in range(0, padded, block_size)]
  return np.concatenate([np.asarray(r) for r in rank_blocks])[:num_users]


def ranking_metrics(rank_U, ks: Sequence[int] = (1, 5, 10, 20, 50)):
  """HR@K, NDCG@K (one relevant item) and MRR from 0-based ranks, as floats.

  hr@K = mean(rank < K); ndcg@K = mean([rank < K] / log2(rank + 2));
  mrr = mean(1 / (rank + 1)); count = number of users (metrics NaN if 0).
  """
  rank_U = np.asarray(rank_U, dtype=np.float64).reshape(-1)
  if rank_U.size and rank_U.min() < 0:
    raise ValueError("ranks must be >= 0")
  count = int(rank_U.size)
  mean = (lambda x_U: float(np.mean(x_U))) if count else (lambda x_U: float("nan"))
  metrics = {"count": count}
  for k in ks:
    hit_U = rank_U < k
    metrics[f"hr@{k}"] = mean(hit_U)
    metrics[f"ndcg@{k}"] = mean(np.where(hit_U, 1.0 / np.log2(rank_U + 2.0), 0.0))
  metrics["mrr"] = mean(1.0 / (rank_U + 1.0))
  return metrics
