"""The click log every reader produces and every later stage reads, and timestamp parsing.

Readers (click_log's text formats, arrow_log's CSV / pairs / Parquet) import this module and
never each other.
"""

import dataclasses

import numpy as np

PAD = 0  # item row 0: padding, never a real item


@dataclasses.dataclass(frozen=True)
class ClickLog:
  """Every user's clicks in click order, CSR: items[indptr[u]:indptr[u+1]]."""
  user_ids: np.ndarray  # [U] raw user ids (unicode)
  item_ids: np.ndarray  # [I] raw item ids (unicode); item_ids[0] is the padding slot ""
  indptr: np.ndarray  # [U+1] int64
  items: np.ndarray  # [N] int32 dense item ids in 1..I-1
  times: np.ndarray | None = None  # [N] float64 seconds, where the log has timestamps

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    """Size of the item table, padding row included."""
    return len(self.item_ids)

  def lengths(self) -> np.ndarray:
    return np.diff(self.indptr)


def gather_ranges(starts: np.ndarray, lengths: np.ndarray):
  """CSR of the ranges [starts[r], starts[r] + lengths[r]): (indptr [R+1] int64, flat indices)."""
  indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  return indptr, np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])


# What pipelines write for a missing value (pandas, Spark, SQL exports), compared stripped and
# case-folded: a click holding one has no user, item or time (--nulls).
NULL_TOKENS = ("", "null", "na", "n/a", "nan", "nat", "none")


def null_mask(values: np.ndarray) -> np.ndarray:
  """[N] bool: which of `values` (str or bytes) are null tokens."""
  folded = np.char.lower(np.char.strip(values))
  tokens = [t.encode() for t in NULL_TOKENS] if folded.dtype.kind == "S" else list(NULL_TOKENS)
  return np.isin(folded, tokens)


def to_seconds(values: np.ndarray) -> np.ndarray:
  """Timestamps as float64 seconds: numbers as they are, ISO-8601 dates or times (UTC, an
  optional trailing Z) since 1970; NaN for a null token. Raises ValueError if any other value
  is neither."""
  nulls = null_mask(values)
  out = np.full(len(values), np.nan)
  out[~nulls] = _seconds_of(values[~nulls])
  return out


def _seconds_of(values: np.ndarray) -> np.ndarray:
  try:
    return values.astype(np.float64)
  except ValueError:
    if _numbers(values).any():  # numbers among dates: numpy would read "17" as the year 17
      raise
    text = np.char.rstrip(np.char.strip(values.astype(str)), "Z")
    return text.astype("datetime64[ms]").astype(np.int64) / 1000.0


def _numbers(values: np.ndarray) -> np.ndarray:
  """Which values are plain decimals (an optional sign and point), vectorised."""
  text = np.char.strip(values.astype(str))
  text = np.char.lstrip(text, "+-")
  return np.char.isdigit(np.char.replace(text, ".", "", count=1))


def first_bad_time(values: np.ndarray) -> int:
  """The index of the first of `values` that to_seconds refuses (after it refused them all):
  one that reads as neither, or the first number among dates or date among numbers."""
  for i, value in enumerate(values):
    try:
      to_seconds(np.array([value]))
    except ValueError:
      return i
  kinds = _numbers(values)[~null_mask(values)]
  return int(np.flatnonzero(~null_mask(values))[np.argmax(kinds != kinds[0])])
