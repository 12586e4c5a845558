"""The input pipeline: every decision about the shape of a training batch, and inference inputs.

A `BatchPlan` fixes, once per run, the rows of a global batch, the length bucket of
every training user, the rows of the long group of a length split (--short_length) and
the popularity sampler; `BatchPlan.epoch` yields the typed batches of one epoch, a pure
function of (seed, epoch, step), so a resumed run sees the same batches. The step only
ever sees a `Batch`.

Shape key: U users, R rows, B batch rows, L padded length, S short length, C rows of
the long group (or real slots of a device's rows, for `slots`), G device groups.
"""

import contextlib
import dataclasses
from typing import Iterator

import flax
import numpy as np

from jaxrec import packing
from jaxrec.clicks import ClickLog, PAD, gather_ranges
from jaxrec.packing import padded_lengths, round_up
from jaxrec.holdout import Split


def left_padded(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
  """[R, length] int32: the last `length` items of each items[starts:ends], left-padded with 0."""
  idx = (ends - length)[:, None] + np.arange(length)[None, :]
  valid = idx >= starts[:, None]
  return np.where(valid, items[np.maximum(idx, 0)], PAD).astype(np.int32)


class PopularitySampler:
  """Draws items with probability count/total; log_q gives the logQ weight of any item."""

  def __init__(self, counts: np.ndarray):
    total = counts.sum()
    self.cdf = np.cumsum(counts) / total
    with np.errstate(divide="ignore"):
      self.log_q = np.log(counts / total).astype(np.float32)
    # A guide table: bin j of [0, 1) in `bins` equal bins starts its search at guide[j - 1]
    # and ends it at guide[j + 2] (a bin wider each side, against rounding in j = u * bins).
    # A plain searchsorted of random queries over a large CDF is cache-bound; a few
    # vectorised bisection rounds over short ranges are not.
    last = len(self.cdf) - 1
    self._bins = 2 * len(self.cdf)
    edges = np.searchsorted(self.cdf, np.arange(self._bins + 1) / self._bins, side="right")
    self._guide = np.minimum(np.concatenate([[0], edges, [last, last]]), last).astype(np.int32)
    self._rounds = int(np.ceil(np.log2(np.max(self._guide[3:] - self._guide[:-3]) + 1)))

  def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
    """Items i with cdf[i-1] <= u < cdf[i] for u ~ U[0, 1): exactly
    min(searchsorted(cdf, u, side="right"), I - 1), found inside each u's guide range."""
    u = rng.random(shape).ravel()
    j = np.minimum((u * self._bins).astype(np.int64), self._bins - 1)
    lo, hi = self._guide[j], self._guide[j + 3]  # guide is shifted by one: guide[j] is bin j - 1's start
    for _ in range(self._rounds):
      mid = (lo + hi) >> 1
      right = self.cdf[mid] <= u
      lo = np.where(right, mid + 1, lo)
      hi = np.where(right, hi, mid)
    return lo.reshape(shape)


def epoch_order(num_rows: int, seed: int, epoch: int, shard: tuple = ()) -> np.ndarray:
  """The shuffle of an epoch: a pure function of (seed, epoch), so runs resume exactly."""
  return np.random.default_rng([seed, epoch, 0x5EED, *shard]).permutation(num_rows)


def bucket_of(input_lengths_R: np.ndarray, bucket_lengths: tuple) -> np.ndarray:
  """[R] index of the shortest of the ascending `bucket_lengths` that holds each row."""
  return np.searchsorted(np.asarray(bucket_lengths), input_lengths_R, side="left")


def epoch_batches(bucket_R: np.ndarray, num_buckets: int, batch_size: int, seed: int,
                  epoch: int, shard: tuple = ()) -> list:
  """Row indices of every batch of an epoch, a pure function of (seed, epoch).

  Rows are shuffled; each batch takes rows of one length bucket, and the batches of
  all buckets are shuffled together. With one bucket, batches are consecutive slices
  of `epoch_order`. The number of batches is the same every epoch.
  """
  order = epoch_order(len(bucket_R), seed, epoch, shard)
  batches = []
  for b in range(num_buckets):
    members = order[bucket_R[order] == b] if num_buckets > 1 else order
    batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
  if num_buckets > 1:
    batches = [batches[i] for i in np.random.default_rng([seed, epoch, 0xB0C]).permutation(len(batches))]
  return batches


@flax.struct.dataclass
class Batch:
  """One global training batch (SPEC section 1) in the plain layout: one user per row.

  input_ids [B, L]: the last L training inputs, left-padded with 0;
  label [B, L]: the next item at each position; padded slots hold popularity-drawn negatives;
  hot_weight [B, L]: log(count/total) of each label item (the logQ correction);
  row_mask [B]: 1 for real users, 0 for rows that only pad the batch (never candidates).
  Which slots the loss scores (None: every slot, the SPEC's literal batch):
  slots [G, C] (--loss=full): per device group of B / G rows, the flat indices (row * L +
    position, within the group) of its real slots, then -1 (packing.real_slots);
  loss_rows (in-batch losses): per loss level after the first, [G, C_k] the rows of each
    group long enough to have real slots in it (packing.level_rows).
  The encoder sees the rows as they are here, or as a SplitBatch or PackedBatch lays them out.
  """
  input_ids: np.ndarray
  label: np.ndarray
  hot_weight: np.ndarray
  row_mask: np.ndarray
  slots: np.ndarray | None = None
  loss_rows: tuple | None = None


@flax.struct.dataclass(kw_only=True)
class SplitBatch(Batch):
  """A Batch whose encoder runs at two padded lengths (--short_length, split_by_length):
  order [B], short_ids [B - C, S], long_ids [C, L]: the rows shortest first, split into a
  group run at length S and the C longest run at L."""
  order: np.ndarray
  short_ids: np.ndarray
  long_ids: np.ndarray


@flax.struct.dataclass(kw_only=True)
class PackedBatch(Batch):
  """A Batch whose users are packed several to a row (layout packed, packing.pack):
  packed_ids [G * P, L], segments [G * P, L], unpack [G, B / G * L]: the users of each
  device group packed into P rows, each its own segment."""
  packed_ids: np.ndarray
  segments: np.ndarray
  unpack: np.ndarray


def fields_of(batch: Batch) -> dict:
  """The fields of the plain Batch underneath any layout's batch."""
  return {f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch)}


def train_batch(split: Split, sampler: PopularitySampler, users: np.ndarray, batch_size: int,
                seq_length: int, seed: int, epoch: int, step: int, shard: tuple = ()) -> Batch:
  """The batch of `users`, exactly as SPEC section 1, padded to `batch_size` rows with masked
  rows. The random negatives are a pure function of (seed, epoch, step) and the data shard
  (hosts.ShardedPlan: () for an unsharded run)."""
  log = split.log
  starts, ends = log.indptr[users], split.train_end[users]
  input_ids = left_padded(log.items, starts, ends - 1, seq_length)
  label = left_padded(log.items, starts + 1, ends, seq_length)
  rows = len(users)
  if rows < batch_size:
    pad = ((0, batch_size - rows), (0, 0))
    input_ids, label = np.pad(input_ids, pad), np.pad(label, pad)
  rng = np.random.default_rng([seed, epoch, step, *shard])
  negatives = sampler.sample(rng, label.shape)
  label = np.where(input_ids == PAD, negatives, label)
  row_mask = (np.arange(batch_size) < rows).astype(np.float32)
  return Batch(input_ids=input_ids, label=label, hot_weight=sampler.log_q[label], row_mask=row_mask)


def split_by_length(batch: Batch, short_length: int, long_rows: int) -> SplitBatch:
  """`batch` with its rows also as two groups, for an encoder run at two padded lengths.

  short_ids [B - C, S]: the B - C rows with the fewest real items, their last S slots
  (S = short_length, or the full length L should one of them be longer);
  long_ids [C, L]: the C longest rows; order [B]: the row of each, shortest first.
  Outputs at real positions do not depend on padding, so this changes no result.
  """
  ids = batch.input_ids
  rows, length = ids.shape
  lengths = (ids != PAD).sum(axis=1)
  order = np.argsort(lengths, kind="stable")
  short = order[:rows - long_rows]
  width = short_length if lengths[short].max(initial=0) <= short_length else length
  return SplitBatch(**fields_of(batch), order=order.astype(np.int32), short_ids=ids[short, length - width:],
                    long_ids=ids[order[rows - long_rows:]])


LAYOUTS = ("auto", "packed", "rows", "plain")


class BatchPlan:
  """How the training users of `split` become the batches of every epoch.

  Rows of a global batch: batch_size rounded up to a multiple of `num_devices`.
  Users are grouped by input length into `bucket_lengths` (shorter padded lengths; exact,
  as outputs at real positions do not depend on padding, but each batch then draws its
  in-batch negatives from one bucket). With `real_slots` (the full softmax), each batch
  lists its real slots per device.

  `layout` says how the encoder and the in-batch loss see a batch; every layout gives
  the same loss and gradients up to float32 rounding:
  - plain: the SPEC's literal batch, one user per row at the padded length, the lbm
    logits at every slot;
  - rows: one user per row (its `long_rows` longest at seq_length and the others at
    `short_length` when that is set), the lbm logits only at real slots (`loss_rows`);
  - packed: the users of each device group packed into `pack_rows` rows per group
    (`pack`), the logits only at real slots;
  - auto: packed where packing at least halves the encoder's rows (measured on the
    first epoch's batches) and `packable` (no short_length, an encoder without a
    sequence filter), else rows, split at the short length that leaves the encoder the
    fewest slots when that saves a quarter of them (no bucket_lengths).
  Capacities (packed rows, rows per loss level) are the most the first epoch needs plus
  an eighth, per padded length, so the step compiles once per shape; a later batch that
  needs more runs unpacked, or with the logits at every slot (one more shape each).
  """

  def __init__(self, split: Split, batch_size: int, seq_length: int, seed: int, num_devices: int = 1,
               bucket_lengths: tuple = (), short_length: int = 0, real_slots: bool = False,
               layout: str = "auto", packable: bool = True, shard: tuple = (), item_counts=None,
               settle: bool = True):
    """`shard`, `item_counts` and settle=False: one data shard of hosts.ShardedPlan, which
    settles every shard's capacities together (`settle`) and agrees each step's shapes."""
    if layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if short_length and layout in ("packed", "plain"):
      raise ValueError(f"short_length splits rows: it needs layout rows or auto, not {layout}")
    self.split, self.batch_size, self.seed, self.shard = split, batch_size, seed, shard
    self.num_devices, self.short_length, self.real_slots = num_devices, short_length, real_slots
    self.requested, self.packable = layout, packable
    self.train_users = split.train_users
    self.num_sequences = len(self.train_users)  # over every process (hosts.ShardedPlan)
    self.rows = round_up(batch_size, num_devices)
    self.bucket_lengths = padded_lengths(seq_length, bucket_lengths)
    self.input_lengths = np.minimum(split.train_end[self.train_users] - split.log.indptr[self.train_users] - 1,
                                    seq_length)
    self.bucket_U = bucket_of(self.input_lengths, self.bucket_lengths)
    counts = np.bincount(self.bucket_U, minlength=len(self.bucket_lengths))
    self.steps_per_epoch = int(sum(-(-c // batch_size) for c in counts))
    self.long_rows = self._long_rows(short_length) if short_length else 0
    self.sampler = PopularitySampler(split.item_counts() if item_counts is None else item_counts)
    self._order = (None, None)  # (epoch, its batches' rows): one epoch's order is kept
    self.pack_rows, self.level_capacity = {}, {}  # padded length -> capacity
    self.packed_share = 1.0  # packed rows / plain rows over the first epoch
    self.packed, self.layout = False, "plain" if layout == "plain" else "rows"
    self.needs = {}  # padded length -> the most the first epoch's batches need (_measure)
    self.packed_slots = self.plain_slots = 0
    if layout != "plain":
      self._measure(pack=layout in ("packed", "auto") and not self.long_rows)
    if settle:
      self.settle()

  def settle(self, needs: dict | None = None, packed_share: float | None = None) -> None:
    """Capacities from the first epoch's needs (or those agreed between shards), and the layout."""
    needs = self.needs if needs is None else needs
    per_group = self.rows // self.num_devices
    self.level_capacity = {k: tuple(min(per_group, packing.with_slack(int(n))) for n in v["levels"])
                           for k, v in needs.items() if "levels" in v}
    self.pack_rows = {k: min(per_group, packing.with_slack(v["pack"])) for k, v in needs.items() if "pack" in v}
    if packed_share is None and self.plain_slots:
      packed_share = self.packed_slots / self.plain_slots
    self.packed_share = 1.0 if packed_share is None else packed_share
    layout, seq_length = self.requested, self.bucket_lengths[-1]
    self.packed = layout == "packed" or (layout == "auto" and self.packable and not self.long_rows
                                         and self.packed_share <= 0.5)
    self.layout = "packed" if self.packed else ("plain" if layout == "plain" else "rows")
    shorter = padded_lengths(seq_length)[:-1]
    if (layout == "auto" and not self.packed and not self.short_length and len(self.bucket_lengths) == 1
        and shorter and not self.shard):
      # Unpacked: split off the short rows at the padded length that leaves the encoder
      # the fewest slots, (B - C) S + C L, if that beats all rows at L.
      best = min(((self.rows - self._long_rows(s)) * s + self._long_rows(s) * seq_length, s) for s in shorter)
      if best[0] < 0.75 * self.rows * seq_length and self._long_rows(best[1]):
        self.short_length, self.long_rows = best[1], self._long_rows(best[1])

  def _long_rows(self, short_length: int) -> int:
    """Rows of the long group: room for the rows longer than short_length in nearly every
    batch (mean + 4 sd); a batch with more runs its short group at full length instead."""
    p = float(np.mean(self.input_lengths > short_length))
    expected = self.batch_size * p + 4 * np.sqrt(self.batch_size * p * (1 - p)) + 1
    return int(min(self.rows - self.num_devices, round_up(int(np.ceil(expected)), self.num_devices)))

  def _lengths_GxR(self, epoch: int, index: int) -> np.ndarray:
    """[G, B / G] input lengths of the rows of batch `index` of `epoch` (0 on padding rows)."""
    rows = self.rows_of(epoch, index)
    lengths = np.zeros(self.rows, np.int64)
    lengths[:len(rows)] = self.input_lengths[rows]
    return lengths.reshape(self.num_devices, -1)

  def _length(self, rows: np.ndarray) -> int:
    return self.bucket_lengths[self.bucket_U[rows[0]]] if len(rows) else self.bucket_lengths[-1]

  def _measure(self, pack: bool) -> None:
    """What the first epoch's batches need per padded length: packed rows per group and rows
    per loss level (the full softmax lists its real slots instead), and the packed share."""
    per_group = self.rows // self.num_devices
    for index in range(self.steps_per_epoch):
      length = self._length(self.rows_of(0, index))
      lengths_GxR = self._lengths_GxR(0, index)
      need = self.needs.setdefault(length, {})
      if not self.real_slots:
        need["levels"] = np.maximum(need.get("levels", 0), packing.level_counts(lengths_GxR, length).max(axis=0))
      if pack:
        used = max(packing.first_fit(n_R, length)[3] for n_R in lengths_GxR)
        need["pack"] = max(need.get("pack", 1), used)
        self.packed_slots, self.plain_slots = self.packed_slots + used * length, self.plain_slots + per_group * length

  def step_needs(self, epoch: int) -> np.ndarray:
    """[steps, 2 + levels] what each batch of `epoch` needs (one padded length): the most real
    slots of a group, packed rows of a group, rows of each loss level after the first.
    Data shards take the elementwise max of theirs (hosts.ShardedPlan), so that every shard
    builds a batch of the same shapes."""
    length = self.bucket_lengths[-1]
    levels = len(packing.level_ends(length)) - 1
    out = np.zeros((self.steps_per_epoch, 2 + levels), np.int64)
    for index in range(self.steps_per_epoch):
      lengths_GxR = self._lengths_GxR(epoch, index)
      out[index, 0] = lengths_GxR.sum(axis=1).max()
      if self.packed:
        out[index, 1] = max(packing.first_fit(n_R, length)[3] for n_R in lengths_GxR)
      out[index, 2:] = packing.level_counts(lengths_GxR, length).max(axis=0)
    return out

  def describe(self) -> str:
    """One line for the log: the layout and its capacities at the longest padded length."""
    length = max(self.pack_rows) if self.pack_rows else self.bucket_lengths[-1]
    per_group = self.rows // self.num_devices
    if self.layout == "packed":
      return (f"batch layout packed: {per_group} users per device in {self.pack_rows[length]} rows of "
              f"{length} ({100 * self.packed_share:.0f}% of the rows), the loss scored at real slots")
    if self.layout == "rows":
      split = f", rows over {self.short_length} split off" if self.long_rows else ""
      return f"batch layout rows{split}: one user per row, the loss scored at real slots"
    return "batch layout plain: one user per row, lbm logits at every slot"

  def rows_of(self, epoch: int, index: int) -> np.ndarray:
    """Indices into train_users of batch `index` of `epoch` (none past this shard's batches)."""
    if self._order[0] != epoch:
      self._order = (epoch, epoch_batches(self.bucket_U, len(self.bucket_lengths), self.batch_size,
                                          self.seed, epoch, self.shard))
    return self._order[1][index] if index < len(self._order[1]) else np.zeros(0, np.int64)

  def batch(self, epoch: int, index: int, need: np.ndarray | None = None) -> tuple[Batch, int]:
    """(host batch, real rows) of step `index` of `epoch`; `need`: the shards' agreed
    step_needs row, which fixes the batch's shapes (else this batch's own needs do)."""
    rows = self.rows_of(epoch, index)
    length = self._length(rows)
    batch = train_batch(self.split, self.sampler, self.train_users[rows], self.rows, length, self.seed,
                        epoch, index, self.shard)
    if self.real_slots:
      batch = batch.replace(slots=packing.real_slots(batch.input_ids, batch.row_mask, self.num_devices,
                                             None if need is None else need[0]))
    elif self.layout != "plain":
      capacity = self.level_capacity[length]
      fits = need is None or bool((need[2:2 + len(capacity)] <= np.asarray(capacity, np.int64)).all())
      batch = batch.replace(loss_rows=packing.level_rows(batch.input_ids, batch.row_mask, self.num_devices, capacity)
                            if fits else None)
    if self.long_rows:
      batch = split_by_length(batch, self.short_length, self.long_rows)
    elif self.packed:
      fits = need is None or need[1] <= self.pack_rows[length]
      packed = packing.pack(batch.input_ids, self.num_devices, self.pack_rows[length]) if fits else None
      if packed is not None:
        batch = PackedBatch(**fields_of(batch), packed_ids=packed[0], segments=packed[1], unpack=packed[2])
    return batch, len(rows)

  def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Batch, int]]:
    """The (host batch, real rows) of steps start, start + 1, ... of `epoch`."""
    for index in range(start, self.steps_per_epoch):
      yield self.batch(epoch, index)


def prefetch(batches: Iterator, depth: int = 2) -> Iterator:
  """`batches`, each built on a background thread up to `depth` ahead of the consumer (the
  host assembles the next batch while the device runs the step). The same items in the
  same order; an exception in the builder is raised where its item would have come."""
  if depth <= 0:
    yield from batches
    return
  import queue
  import threading
  done = object()
  ready = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def build():
    try:
      for item in batches:
        if stop.is_set():
          return
        ready.put(item)
      ready.put(done)
    except BaseException as e:  # noqa: BLE001 (re-raised in the consumer)
      ready.put(e)

  thread = threading.Thread(target=build, name="jaxrec-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a builder waiting on a full queue
      with contextlib.suppress(queue.Empty):
        ready.get_nowait()
      thread.join(timeout=0.01)


def clicks_before(log: ClickLog, users: np.ndarray, ends: np.ndarray):
  """CSR (indptr [R+1], items) of each user's clicks from their first up to `ends` (exclusive)."""
  starts = log.indptr[users]
  indptr, gather = gather_ranges(starts, ends - starts)
  return indptr, log.items[gather]


def inference_inputs(log: ClickLog, ends: np.ndarray, users: np.ndarray, seq_length: int) -> np.ndarray:
  """[R, L] int32: each user's last L clicks before `ends`, left-padded (eval and export)."""
  return left_padded(log.items, log.indptr[users], ends, seq_length)


def inference_blocks(lengths_U: np.ndarray, seq_length: int, block_rows: int):
  """Yields (rows [<= block_rows], padded length) covering every user once, shortest first.

  Each block runs at the shortest of `padded_lengths(seq_length)` that holds its longest
  history: exact, and most histories are short; a fixed row count (pad the last block)
  means one compile per length.
  """
  lengths = padded_lengths(seq_length)
  order = np.argsort(np.minimum(lengths_U, seq_length), kind="stable")
  for start in range(0, len(order), block_rows):
    rows = order[start:start + block_rows]
    yield rows, lengths[int(bucket_of(np.minimum(lengths_U[rows[-1:]], seq_length), lengths)[0])]
