"""Which users each process of a run holds, and how the processes' batches and results combine.

The users are split into `--data_shards` shards by a stable hash of the raw user id
(crc32 of its UTF-8 bytes, modulo the shard count); process p of P holds shards
p * S / P .. (p + 1) * S / P - 1 and nobody else's clicks. Every process reads the whole
log, so the item vocabulary and the item popularity (logQ, popularity negatives) are
those of the whole log and the same everywhere; then it drops the other users.

With --shard_by=file (a Parquet directory whose files each hold whole users, as Spark's
repartition by user writes it), shard s is instead the files i with i % S == s, and a process
reads only its shards' files whole: the vocabulary comes from one pass over the item column of
every file (memory bounded by the catalog), the item popularity from the processes' training
counts summed, and each user's index in the whole log from the files' user counts, so the
metrics and batches equal those of one process reading every file as S shards.

Training: each shard has its own BatchPlan over its users with batch_size / S rows (its
own shuffle and negatives), and the global batch of a step is the concatenation of the
shards' batches in shard order, so the batches depend on the shard count and the seed,
not on how many processes or devices run them: one process holding both shards of a
2-shard run sees the batches a 2-process run sees. Whatever fixes a batch's shapes
(capacities, per-step packing and slot counts) is agreed between the shards: its
elementwise max, over the processes with process_allgather.

Collectives: every process makes the same calls in the same order, all from the main
thread (never from the prefetch thread, which would race the train step's collectives).
"""

import dataclasses
import os
import zlib

import jax
import numpy as np

from jaxrec import arrow_log
from jaxrec import click_log
from jaxrec import input_pipeline
from jaxrec import packing
from jaxrec import vocab
from jaxrec.clicks import ClickLog, gather_ranges
from jaxrec.errors import InputError
from jaxrec.holdout import Split


def shard_of(user_ids: np.ndarray, num_shards: int) -> np.ndarray:
  """[U] int64: the data shard of each raw user id, the same on every machine and run."""
  if num_shards == 1:
    return np.zeros(len(user_ids), np.int64)
  return np.fromiter((zlib.crc32(u.encode()) % num_shards for u in user_ids.tolist()), np.int64,
                     count=len(user_ids))


def own_shards(num_shards: int) -> range:
  per_process = num_shards // jax.process_count()
  return range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def own_users(user_ids: np.ndarray, num_shards: int) -> np.ndarray:
  """Indices of the users of this process's shards, ascending."""
  shards, shard_U = own_shards(num_shards), shard_of(user_ids, num_shards)
  return np.flatnonzero((shard_U >= shards.start) & (shard_U < shards.stop))


@dataclasses.dataclass(frozen=True)
class FileShares:
  """--shard_by=file: what reading only this process's files tells about its users, by user id:
  each one's data shard (its file's index modulo --data_shards) and its index in the whole log
  (files in path order, each file's users in the order its reader gives them)."""
  shard: dict
  index: dict
  users: int  # in the whole log


def read_own_files(data, num_shards: int) -> tuple[ClickLog, FileShares]:
  """(this process's users' clicks, FileShares) of the Parquet directory data.data_path: only
  the files of this process's shards are read whole; the item column of every file gives the
  vocabulary, the same on every process (a collective: every process calls it)."""
  path = data.data_path
  if not os.path.isdir(path):
    raise InputError(f"--shard_by=file: --data_path={path} is not a directory of Parquet files")
  files = arrow_log.parquet_files(path)
  if len(files) < num_shards:
    raise InputError(f"--shard_by=file: {path} has {len(files)} Parquet files for --data_shards={num_shards}; "
                     "shard s takes the files i with i % --data_shards == s, so each shard needs one")
  shards = own_shards(num_shards)
  own = [i for i in range(len(files)) if i % num_shards in shards]
  item_ids = np.concatenate([[""], arrow_log.item_ids_of_files(path, files, data.item_col)])
  logs, where = [], {}
  for i in own:
    log = click_log.read_click_log(path, "parquet", data.user_col, data.item_col, data.time_col,
                                   nulls=data.nulls, files=[files[i]])
    log, _ = vocab.align_to_vocab(log, item_ids)  # every item is in the vocabulary: nothing dropped
    for user in log.user_ids.tolist():
      if user in where:
        raise InputError(f"--shard_by=file: user {user!r} is in {files[where[user]]} and {files[i]}; each user's "
                         "clicks must be in one file (Spark: repartition(n, \"user\"))")
      where[user] = i
    logs.append(log)
  counts = np.zeros(len(files), np.int64)
  counts[own] = [l.num_users for l in logs]
  offsets = np.concatenate([[0], np.cumsum(_agree_sum(counts))])  # every file's users, from their readers
  index, shard = {}, {}
  for i, log in zip(own, logs):
    for k, user in enumerate(log.user_ids.tolist()):
      index[user], shard[user] = int(offsets[i] + k), i % num_shards
  lengths = np.concatenate([[0]] + [np.diff(l.indptr) for l in logs]).astype(np.int64)
  times = None if logs[0].times is None else np.concatenate([l.times for l in logs])
  log = ClickLog(np.concatenate([l.user_ids for l in logs]).astype(str), item_ids, np.cumsum(lengths),
                 np.concatenate([l.items for l in logs]).astype(np.int32), times)
  return log, FileShares(shard, index, int(offsets[-1]))


def file_share(split: Split, shares: FileShares) -> Split:
  """`split` (this process's users, read by read_own_files) with their shards, their indices in
  the whole log, and the whole log's training clicks per item (summed over the processes)."""
  users = split.log.user_ids.tolist()
  return dataclasses.replace(split, user_index=np.array([shares.index[u] for u in users], np.int64),
                             shards=np.array([shares.shard[u] for u in users], np.int64),
                             counts=_agree_sum(split.item_counts()))


def subset_log(log: ClickLog, users: np.ndarray) -> ClickLog:
  """The clicks of `users` (ascending indices) only; the item vocabulary is kept whole."""
  indptr, take = gather_ranges(log.indptr[users], log.lengths()[users])
  return ClickLog(log.user_ids[users], log.item_ids, indptr, log.items[take],
                  None if log.times is None else log.times[take])


def subset_split(split: Split, users: np.ndarray, item_counts: np.ndarray) -> Split:
  """`split` for `users` (ascending indices into its log) only, which keep their targets;
  `item_counts` (the whole log's) and the users' indices in the whole log are kept with it."""
  log = subset_log(split.log, users)
  local = np.full(split.log.num_users, -1, np.int64)
  local[users] = np.arange(len(users))
  shift = log.indptr[:-1] - split.log.indptr[users]  # where each user's clicks moved by

  def targets(which_users, ends):
    keep = local[which_users] >= 0
    u = local[which_users[keep]]
    return u, ends[keep] + shift[u]
  valid_users, valid_ends = targets(split.valid_users, split.valid_ends)
  test_users, test_ends = targets(split.test_users, split.test_ends)
  index = users if split.user_index is None else split.user_index[users]
  return Split(log, split.train_end[users] + shift, valid_users, valid_ends, test_users, test_ends,
               user_index=index, counts=item_counts, sample=split.sample,
               shards=None if split.shards is None else split.shards[users])


def agree_max(x: np.ndarray) -> np.ndarray:
  """The elementwise max of `x` (int, the same shape everywhere) over the processes."""
  x = np.asarray(x, np.int64)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  # int32 on the wire: jax without x64 would narrow int64 anyway; counts here are small.
  return np.asarray(multihost_utils.process_allgather(x.astype(np.int32))).max(axis=0).astype(np.int64)


def gather(*values) -> tuple:
  """Each of `values` (arrays of the same row count here, any count elsewhere; float32 or
  int32, which cross exactly) concatenated over the processes in process order."""
  values = [np.asarray(v) for v in values]
  if jax.process_count() == 1:
    return tuple(values)
  from jax.experimental import multihost_utils
  counts = np.asarray(multihost_utils.process_allgather(np.int32(len(values[0]))))
  most = max(int(counts.max()), 1)
  pad = lambda v: np.concatenate([v, np.zeros((most - len(v),) + v.shape[1:], v.dtype)])
  stacked = multihost_utils.process_allgather([pad(v) for v in values])
  return tuple(np.concatenate([part[:n] for part, n in zip(np.asarray(s), counts)]) for s in stacked)


def gather_rows(key_N: np.ndarray, *values) -> tuple:
  """(keys, *values) of every process (`gather`), sorted by the keys (unique over processes)."""
  key_N, *values = gather(np.asarray(key_N).astype(np.int32), *values)
  order = np.argsort(key_N, kind="stable")
  return (key_N[order].astype(np.int64), *(v[order] for v in values))


def gather_csr(key_U: np.ndarray, indptr: np.ndarray, values: np.ndarray) -> tuple:
  """(indptr, values) of every process's CSR rows (one per key), rows sorted by the keys."""
  key_U, counts = gather(np.asarray(key_U).astype(np.int32), np.diff(indptr).astype(np.int32))
  flat, = gather(np.asarray(values).astype(np.int32))
  order = np.argsort(key_U, kind="stable")
  starts = np.cumsum(counts, dtype=np.int64) - counts
  indptr, take = gather_ranges(starts[order], counts[order].astype(np.int64))
  return indptr, flat[take]


class ShardedPlan:
  """The global batches of a run of several data shards (see the module docstring), with the
  interface of input_pipeline.BatchPlan that train.Trainer uses."""

  def __init__(self, split: Split, batch_size: int, seq_length: int, seed: int, num_shards: int,
               num_devices: int, item_counts: np.ndarray, **plan_kwargs):
    """`split`: this process's users; `num_devices`: this process's devices."""
    shards = own_shards(num_shards)
    # Each shard's rows form device groups of their own; a process's groups must split evenly
    # over its devices.
    groups = max(1, num_devices // len(shards))
    if (len(shards) * groups) % num_devices:
      raise InputError(f"--data_shards={num_shards}: {len(shards)} shards per process and its "
                       f"{num_devices} devices: one must divide the other")
    shard_U = shard_of(split.log.user_ids, num_shards) if split.shards is None else split.shards
    self.plans = []
    for s in shards:
      users = np.flatnonzero(shard_U == s)
      self.plans.append(input_pipeline.BatchPlan(
          subset_split(split, users, item_counts), -(-batch_size // num_shards), seq_length, seed,
          groups, shard=(s, num_shards), item_counts=item_counts, settle=False,
          **plan_kwargs))
    first = self.plans[0]
    self.sampler, self.seq_length = first.sampler, seq_length
    self.train_users = np.concatenate([p.train_users for p in self.plans])  # this process's
    self.num_sequences = int(_agree_sum([len(self.train_users)])[0])
    self.rows = sum(p.rows for p in self.plans) * jax.process_count()  # global rows
    # Start-up: per shard [steps, packed rows, rows per loss level...] (agreed by max) and the
    # packed and plain slots of its first epoch (agreed by sum: the packed share).
    levels = len(packing.level_ends(seq_length)) - 1
    most = np.zeros((len(self.plans), 2 + levels), np.int64)
    for row, plan in zip(most, self.plans):
      need = plan.needs.get(seq_length, {})
      row[:2] = plan.steps_per_epoch, need.get("pack", 1)
      row[2:] = need.get("levels", 0)
    most = agree_max(most.max(axis=0))
    sums = _agree_sum([sum(p.packed_slots for p in self.plans), sum(p.plain_slots for p in self.plans)])
    needs = {seq_length: {"pack": int(most[1]), **({} if first.real_slots else {"levels": most[2:]})}}
    for plan in self.plans:
      plan.steps_per_epoch = int(most[0])
      plan.settle(needs, sums[0] / sums[1] if sums[1] else None)
    self.steps_per_epoch = int(most[0])
    self.layout = first.layout
    self._epoch_needs = (None, None)

  def describe(self) -> str:
    return (f"{len(self.plans) * jax.process_count()} data shards of {self.plans[0].rows} rows; "
            + self.plans[0].describe())

  def needs(self, epoch: int) -> np.ndarray:
    """[steps, ...] the shapes every shard's batch of each step of `epoch` must hold (collective)."""
    if self._epoch_needs[0] != epoch:
      local = np.max([plan.step_needs(epoch) for plan in self.plans], axis=0)
      self._epoch_needs = (epoch, agree_max(local))
    return self._epoch_needs[1]

  def batch(self, epoch: int, index: int):
    """(this process's part of the global batch, its real rows) of step `index` of `epoch`."""
    return self._step(epoch, index, self.needs(epoch)[index])

  def _step(self, epoch: int, index: int, need: np.ndarray):
    parts = [plan.batch(epoch, index, need) for plan in self.plans]
    return concat_batches([b for b, _ in parts]), sum(rows for _, rows in parts)

  def epoch(self, epoch: int, start: int = 0):
    """As BatchPlan.epoch; the agreement on the epoch's shapes happens in this call, so it
    runs on the caller's (main) thread, not on the prefetch thread that iterates."""
    needs = self.needs(epoch)
    return (self._step(epoch, index, needs[index]) for index in range(start, self.steps_per_epoch))


def concat_batches(batches: list):
  """One Batch of the shards' batches, rows and device groups in shard order."""
  if len(batches) == 1:
    return batches[0]
  def cat(*fields):
    if fields[0] is None:
      return None
    if isinstance(fields[0], tuple):
      return tuple(np.concatenate(f) for f in zip(*fields))
    return np.concatenate(fields)
  first = batches[0]
  # Every shard's batch has the agreed layout; rows split by length never meet several shards.
  assert all(type(b) is type(first) for b in batches) and not isinstance(first, input_pipeline.SplitBatch)
  return first.replace(**{f.name: cat(*(getattr(b, f.name) for b in batches)) for f in dataclasses.fields(first)})


def _agree_sum(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.int64)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  # Slot counts of a big log pass 2^31: each value crosses as two int32 words.
  hi, lo = (x >> 31).astype(np.int32), (x & 0x7FFFFFFF).astype(np.int32)
  both = np.asarray(multihost_utils.process_allgather(np.stack([hi, lo]))).astype(np.int64)
  return ((both[:, 0] << 31) + both[:, 1]).sum(axis=0)
