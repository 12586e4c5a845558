"""Which clicks train and which are validation and test targets: leave-one-out, a global time
split, or no holdout (the model to ship)."""

import dataclasses

import numpy as np

from jaxrec.clicks import ClickLog
from jaxrec.errors import InputError


@dataclasses.dataclass(frozen=True)
class Split:
  """Which clicks train and which are validation and test targets.

  `train_end[u]` is the exclusive end of user u's training clicks in `log.items`. A
  target of `valid` or `test` is the click at index `end` of its user; the clicks
  before it are the input, and the history that ranking excludes.
  """
  log: ClickLog
  train_end: np.ndarray  # [U] int64
  valid_users: np.ndarray  # [V]
  valid_ends: np.ndarray  # [V] index of each validation target in log.items
  test_users: np.ndarray  # [T]
  test_ends: np.ndarray  # [T]
  # One process's share of a multi-process run (hosts.subset_split): each user's index in the
  # whole log, and the whole log's training clicks per item. None: the log is the whole log.
  user_index: np.ndarray | None = None  # [U]
  counts: np.ndarray | None = None  # [I]
  sample: tuple | None = None  # --eval_users: (users drawn, of how many, the test sampled too)
  shards: np.ndarray | None = None  # [U] --shard_by=file: each user's data shard (else a hash of its id)

  @property
  def train_users(self) -> np.ndarray:
    """Users with at least one (input, label) pair: >= 2 training clicks."""
    return np.flatnonzero(self.train_end - self.log.indptr[:-1] >= 2)

  @property
  def has_holdout(self) -> bool:
    return len(self.valid_users) > 0

  def describe(self) -> str:
    """One line for the log: what trains and what is held out."""
    train_clicks_U = self.train_end - self.log.indptr[:-1]
    held = (f"{len(self.valid_users)} validation and {len(self.test_users)} test targets held out"
            if self.has_holdout else "nothing held out")
    if self.sample:
      held += (f" (validation{' and test' if self.sample[2] else ''} on a sample of {self.sample[0]} of "
               f"{self.sample[1]} users, --eval_users)")
    return f"{int(train_clicks_U.sum())} training clicks of {np.count_nonzero(train_clicks_U)} users, {held}"

  def sampled(self, users: int, seed: int, test_too: bool) -> "Split":
    """Validation on a fixed sample of `users` of the validation users (drawn with `seed`; all of
    them if there are no more), and with `test_too` the test on the sample's users only. The
    sample depends only on the log, `users` and `seed`: a resumed run, --mode=eval and every
    process draw the same one."""
    if not users or users >= len(self.valid_users):
      return self
    rng = np.random.default_rng([seed, 0x5A3B1E])
    pick = np.sort(rng.choice(len(self.valid_users), users, replace=False))
    out = dataclasses.replace(self, valid_users=self.valid_users[pick], valid_ends=self.valid_ends[pick],
                              sample=(users, len(self.valid_users), test_too))
    if test_too:
      keep = np.isin(self.test_users, out.valid_users)
      out = dataclasses.replace(out, test_users=self.test_users[keep], test_ends=self.test_ends[keep])
    return out

  def item_counts(self) -> np.ndarray:
    """[I] training clicks per item (padding 0 has none), over the whole log."""
    if self.counts is not None:
      return self.counts
    starts = self.log.indptr[:-1]
    in_train = np.repeat(np.arange(self.log.num_users), self.log.lengths())
    offsets = np.arange(len(self.log.items)) - starts[in_train]
    mask = offsets < (self.train_end - starts)[in_train]
    return np.bincount(self.log.items[mask], minlength=self.log.num_items)

  def eval_inputs(self, split: str):
    """(users [E], input end [E], target item [E]) of `valid` or `test`."""
    if split == "valid":
      return self.valid_users, self.valid_ends, self.log.items[self.valid_ends]
    if split == "test":
      return self.test_users, self.test_ends, self.log.items[self.test_ends]
    raise ValueError(split)


def leave_one_out(log: ClickLog, path: str = "data") -> Split:
  """The last click tests, the second-to-last validates, the rest trains; users with
  fewer than 3 clicks only train."""
  lengths = log.lengths()
  eval_users = np.flatnonzero(lengths >= 3)
  if len(eval_users) == 0:
    raise InputError(f"{path}: no user has 3 or more clicks, so nothing can be validated or tested")
  train_end = log.indptr[1:] - np.where(lengths >= 3, 2, 0)
  ends = log.indptr[eval_users + 1]
  return Split(log, train_end, eval_users, ends - 2, eval_users, ends - 1)


def no_holdout(log: ClickLog) -> Split:
  """Every click trains (the shipped model); nothing is validated or tested."""
  none = np.zeros(0, np.int64)
  return Split(log, log.indptr[1:].copy(), none, none, none, none)


def time_split(log: ClickLog, valid_from: float, test_from: float, path: str = "data") -> Split:
  """Clicks before `valid_from` train. Each user's first click in [valid_from, test_from)
  is a validation target and the first at or after `test_from` a test target, each
  with every earlier click as input (users with no earlier click are not evaluated)."""
  if log.times is None:
    raise InputError(f"{path}: --split=time needs timestamps (a third `pairs` column or --time_col)")
  starts = log.indptr[:-1]
  users_N = np.repeat(np.arange(log.num_users), log.lengths())
  # Clicks are sorted by time within a user, so "first index at or after t" is a count.
  def first_at_or_after(t):
    return starts + np.bincount(users_N[log.times < t], minlength=log.num_users)
  train_end = first_at_or_after(valid_from)
  valid_first, test_first = train_end, first_at_or_after(test_from)
  valid_users = np.flatnonzero((valid_first < test_first) & (valid_first > starts))
  test_users = np.flatnonzero((test_first < log.indptr[1:]) & (test_first > starts))
  if not len(valid_users) or not len(test_users):
    raise InputError(f"{path}: the time split leaves {len(valid_users)} validation and {len(test_users)} "
                     "test users (each needs a click before the boundary and one after)")
  return Split(log, train_end, valid_users, valid_first[valid_users], test_users, test_first[test_users])
