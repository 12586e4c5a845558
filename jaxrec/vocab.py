"""A workdir's vocabulary (vocab.npz) is the truth: the raw id of every row of the item tables.

Every mode that reads a workdir maps the log it is given through it (`align_to_vocab`), so
a log whose ids are renamed or reordered can never be read under the wrong rows.
"""

import dataclasses
import hashlib
import os

import numpy as np

from jaxrec.clicks import ClickLog
from jaxrec.errors import InputError
from jaxrec.fileio import atomic_path

FILENAME = "vocab.npz"


def path_in(workdir: str) -> str:
  """The vocabulary of a workdir."""
  return os.path.join(workdir, FILENAME)


def save_vocab(log: ClickLog, path: str, new_items: np.ndarray | None = None,
               item_counts: np.ndarray | None = None) -> None:
  """Writes the raw ids; `new_items` [I] bool marks items a warm start added; `item_counts`
  [I] are the training clicks per item (serving's most-popular fallback)."""
  extra = {} if new_items is None else {"new_items": new_items}
  if item_counts is not None:
    extra["item_counts"] = item_counts
  with atomic_path(path, suffix=".npz") as tmp:
    np.savez(tmp, user_ids=log.user_ids, item_ids=log.item_ids, **extra)


def load_item_counts(path: str) -> np.ndarray | None:
  """[I] training clicks per item, where the vocabulary records them."""
  with np.load(path, allow_pickle=False) as npz:
    return npz["item_counts"] if "item_counts" in npz.files else None


def load_item_vocab(path: str) -> np.ndarray:
  """[I] raw item ids of a workdir's vocab.npz (item_ids[0] is padding)."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      item_ids = npz["item_ids"]
  except (OSError, KeyError, ValueError) as e:
    raise InputError(f"{path}: not a jaxrec vocabulary ({e})") from None
  if item_ids.ndim != 1 or item_ids.dtype.kind != "U" or not len(item_ids) or item_ids[0] != "":
    raise InputError(f"{path}: not a jaxrec vocabulary (item_ids must be unicode, padding first)")
  return item_ids


def vocab_fingerprint(item_ids: np.ndarray) -> str:
  """sha256 of the item ids in table order: equal fingerprints, equal row meanings."""
  return hashlib.sha256("\n".join(item_ids.tolist()).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Alignment:
  """What mapping a log onto a model's vocabulary left out."""
  unknown_items: int  # distinct items of the log the vocabulary lacks
  unknown_clicks: int  # their clicks, skipped
  dropped_users: int  # users left with no click
  missing_items: int  # items of the vocabulary the log never clicks (they stay in the catalog)


def align_to_vocab(log: ClickLog, item_ids: np.ndarray) -> tuple[ClickLog, Alignment]:
  """The log with the dense ids of `item_ids` (a model's vocabulary, padding first):
  clicks on items it lacks are skipped, users left with no click are dropped."""
  order = np.argsort(item_ids[1:], kind="stable")
  known_sorted = item_ids[1:][order]
  raw = log.item_ids[1:]
  pos = np.minimum(np.searchsorted(known_sorted, raw), max(len(known_sorted) - 1, 0))
  found = known_sorted[pos] == raw if len(known_sorted) else np.zeros(len(raw), bool)
  mapping = np.zeros(log.num_items, np.int32)
  mapping[1:][found] = order[pos[found]] + 1
  items = mapping[log.items]
  keep = items > 0
  user_N = np.repeat(np.arange(log.num_users), log.lengths())
  counts = np.bincount(user_N[keep], minlength=log.num_users)
  has = counts > 0
  aligned = ClickLog(log.user_ids[has], item_ids, np.concatenate([[0], np.cumsum(counts[has])]).astype(np.int64),
                     items[keep], None if log.times is None else log.times[keep])
  clicked = np.zeros(len(item_ids), bool)
  clicked[aligned.items] = True
  return aligned, Alignment(int((~found).sum()), int((~keep).sum()), int((~has).sum()),
                            int(len(item_ids) - 1 - clicked[1:].sum()))
