"""Packing and real-slot scoring: which slots of a batch the encoder and the loss work on.

Pure numpy, no JAX. A batch's users can be packed several to a row (`first_fit`, `pack`),
each its own segment; the full softmax scores only real slots (`real_slots`), the in-batch
losses only the rows long enough to have real slots in each level (`level_rows`). Shapes
are rounded (`slot_capacity`, `with_slack`) so few distinct shapes, and so few compiles,
occur.

Shape key: B rows, L padded length, G device groups, P packed rows per group, C capacity,
R rows of a group, T slots.
"""

import numpy as np

from jaxrec.clicks import PAD


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n."""
  return -(-n // multiple) * multiple


def padded_lengths(seq_length: int, shorter: tuple = (8, 16, 32, 64, 128, 256, 512)) -> tuple:
  """Ascending padded lengths: those of `shorter` below seq_length, then seq_length itself."""
  return tuple(sorted({b for b in shorter if b < seq_length} | {seq_length}))


def real_slots(input_ids_BxL: np.ndarray, row_mask_B: np.ndarray, groups: int, most: int | None = None) -> np.ndarray:
  """[G, C] int32 for --loss=full: for each of G groups of B / G rows (one per device), the
  flat indices (row * L + position, within the group) of its real slots, then -1.

  C is the most any group has (or `most`, agreed between data shards), rounded up by
  slot_capacity: few distinct shapes, so few compiles of the train step, and (from 1024
  slots on) at most 1/8 more slots scored.
  """
  real_GxT = ((input_ids_BxL != PAD) & (row_mask_B[:, None] > 0)).reshape(groups, -1)
  most = int(real_GxT.sum(axis=1).max()) if most is None else int(most)
  slots = np.full((groups, slot_capacity(most)), -1, np.int32)
  for g, real_T in enumerate(real_GxT):
    index = np.flatnonzero(real_T)
    slots[g, :len(index)] = index
  return slots


def slot_capacity(n: int) -> int:
  """n rounded up to a multiple of max(128, 2^(bits(n) - 4)); at most n / 8 more from n = 1024 on."""
  step = max(128, 1 << max(0, n.bit_length() - 4))
  return max(step, round_up(n, step))


def first_fit(lengths_R: np.ndarray, width: int) -> tuple:
  """First-fit decreasing of segments of `lengths_R` (each <= width) into rows of `width`.

  Returns (row [R], offset [R], segment [R], rows used): row and first slot of each
  segment, and its number within its row (1, 2, ...); segments of length 0 get row -1.
  """
  count = len(lengths_R)
  row, offset, segment = np.full(count, -1), np.zeros(count, np.int64), np.zeros(count, np.int64)
  free, used = [], []  # per packed row: free slots, segments placed
  for r in np.argsort(-lengths_R, kind="stable"):
    n = int(lengths_R[r])
    if n == 0:
      break  # sorted longest first: the rest are empty too
    target = next((i for i, f in enumerate(free) if f >= n), len(free))
    if target == len(free):
      free.append(width)
      used.append(0)
    row[r], offset[r] = target, width - free[target]
    free[target] -= n
    used[target] += 1
    segment[r] = used[target]
  return row, offset, segment, len(free)


def pack(input_ids_BxL: np.ndarray, groups: int, rows_per_group: int):
  """(packed_ids [G * P, L], segments [G * P, L], unpack [G, B / G * L]), or None if some
  group's users need more than P = rows_per_group rows.

  Each group of B / G rows (one per device) is packed into its own P rows: each user's
  real items, in order, as one contiguous segment (numbered 1, 2, ... within its packed
  row, 0 on padding). unpack[g, b * L + t] is where the plain slot (b, t) of the group
  went (packed row within the group * L + slot), -1 for its padding slots.
  """
  batch, length = input_ids_BxL.shape
  per_group = batch // groups
  lengths_B = (input_ids_BxL != PAD).sum(axis=1)
  packed_ids = np.zeros((groups * rows_per_group, length), np.int32)
  segments = np.zeros_like(packed_ids)
  unpack = np.full((groups, per_group * length), -1, np.int32)
  for g in range(groups):
    n_R = lengths_B[g * per_group:(g + 1) * per_group]
    row_R, offset_R, segment_R, used = first_fit(n_R, length)
    if used > rows_per_group:
      return None
    b_T = np.repeat(np.arange(per_group), n_R)  # each real slot's row, and j its index in the row
    j_T = np.arange(len(b_T)) - np.repeat(np.cumsum(n_R) - n_R, n_R)
    plain_T, packed_T = length - n_R[b_T] + j_T, offset_R[b_T] + j_T
    packed_ids[g * rows_per_group + row_R[b_T], packed_T] = input_ids_BxL[g * per_group + b_T, plain_T]
    segments[g * rows_per_group + row_R[b_T], packed_T] = segment_R[b_T]
    unpack[g, b_T * length + plain_T] = row_R[b_T] * length + packed_T
  return packed_ids, segments, unpack


# Loss levels, counted back from the last position: level k holds the positions
# L - ends[k] .. L - ends[k - 1] - 1 and is scored only for rows longer than ends[k - 1].
LEVEL_LENGTHS = (8, 16, 32, 64, 128, 256, 512)


def level_ends(length: int) -> tuple:
  return padded_lengths(length, LEVEL_LENGTHS)


def level_counts(lengths_GxR: np.ndarray, length: int) -> np.ndarray:
  """[G, K - 1]: the rows of each group longer than the start of each level after the first."""
  starts = np.asarray(level_ends(length)[:-1])
  return (lengths_GxR[:, :, None] > starts[None, None, :]).sum(axis=1)


def level_rows(input_ids_BxL: np.ndarray, row_mask_B: np.ndarray, groups: int, capacities: tuple):
  """Per level after the first, [G, C_k] int32: the rows (within their group of B / G) with
  real slots in the level, then -1; None if a level has more than its capacity C_k."""
  lengths_GxR = (((input_ids_BxL != PAD).sum(axis=1)) * (row_mask_B > 0)).reshape(groups, -1)
  out = []
  for start, capacity in zip(level_ends(input_ids_BxL.shape[1])[:-1], capacities):
    rows = np.full((groups, capacity), -1, np.int32)
    for g, lengths_R in enumerate(lengths_GxR):
      index = np.flatnonzero(lengths_R > start)
      if len(index) > capacity:
        return None
      rows[g, :len(index)] = index
    out.append(rows)
  return tuple(out)


def loss_levels(length: int, loss_rows: tuple | None):
  """The `levels` argument of loss.in_batch_softmax_loss for a batch's `loss_rows`:
  (lo, hi, rows) per level; the first level (the last positions) is scored for every row."""
  if loss_rows is None:
    return None
  ends = level_ends(length)
  levels = [(length - ends[0], length, None)]
  for start, end, rows in zip(ends[:-1], ends[1:], loss_rows):
    if rows.shape[1]:
      levels.append((length - end, length - start, rows))
  return tuple(levels)


def with_slack(n: int) -> int:
  """A capacity for counts seen up to n: an eighth more, so later epochs rarely exceed it."""
  return n + -(-n // 8)
