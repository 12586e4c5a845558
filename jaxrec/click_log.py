"""Click logs: readers, format detection and the synthetic log (splits: holdout.py).

Readers are vectorised over the bytes of the file: no Python object per click, so
10M clicks load in seconds. Raw ids are strings; dense item ids start at 1 and 0 is
padding. Every malformed input raises InputError naming the file and line.

Shape key: U users, I items (incl. padding 0), N clicks, R rows of a CSR gather.
"""

import csv
import io
import os
import re

import numpy as np

from jaxrec import arrow_log
from jaxrec import console
from jaxrec.clicks import ClickLog, gather_ranges, to_seconds, first_bad_time, null_mask
from jaxrec.config import DATA_FORMATS, SEPARATORS
from jaxrec.errors import InputError

_NOTE_LINE = re.compile(rb"^\s*([^\s:\[\],]+)\s*:\s*\[([^\[\]:]*)\]\s*$")


# ----------------------------------------------------------------------------- reading


def read_click_log(path: str, data_format: str = "auto", user_col: str = "user", item_col: str = "item",
                   time_col: str = "", separator: str = "auto", nulls: str = "refuse",
                   files: list | None = None) -> ClickLog:
  """Reads a click log in one of config.DATA_FORMATS (not synthetic) into a ClickLog.

  Text may be gzip, bz2 or zstd compressed (told by its first bytes). `separator` (CSV):
  a name of config.SEPARATORS. `nulls` (CSV, pairs, Parquet): refuse or drop a click with
  a null user, item or time (clicks.NULL_TOKENS). `files`: only these of a Parquet directory.
  """
  if files is not None or data_format == "parquet" or (data_format == "auto" and _looks_parquet(path)):
    return _group_dense(*_handle_nulls(path, arrow_log.read_parquet(path, user_col, item_col, time_col, files),
                                       nulls))
  raw = read_bytes(path)
  name = _without_compression_suffix(path)
  if data_format == "auto":
    data_format = detect_format(name, raw, user_col, item_col)
  if data_format == "csv":
    _check_text(path, raw)
    delimiter = _csv_separator(path, raw, separator, user_col, item_col)
    try:
      columns = arrow_log.read_csv(path, raw, user_col, item_col, time_col, delimiter)
    except arrow_log.Unreadable:  # the line reader skips what Arrow will not, or names the line
      columns = _parse_csv(path, raw, user_col, item_col, time_col, delimiter)
    return _group_dense(*_handle_nulls(path, columns, nulls))
  if data_format == "pairs" and b"\x00" not in raw:
    # Arrow checks that every field is UTF-8 (ids as strings, a time as a number), so the
    # whole-file decode of _check_text is left to the line reader's files.
    try:
      return _group_dense(*_handle_nulls(path, arrow_log.read_pairs(path, raw), nulls))
    except arrow_log.Unreadable:
      pass
  _check_text(path, raw)
  if data_format == "note":
    return _parse_note(path, raw)
  if data_format == "sequences":
    return _parse_sequences(path, raw)
  if data_format == "pairs":
    return _group_dense(*_handle_nulls(path, _parse_pairs(path, raw), nulls))
  raise InputError(f"--data_format: unknown format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}")


_COMPRESSION = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\x28\xb5\x2f\xfd": "zstd"}  # leading magic bytes
_COMPRESSION_SUFFIXES = (".gz", ".gzip", ".bz2", ".zst", ".zstd")


def _without_compression_suffix(path: str) -> str:
  """The name a compressed file's contents go by (clicks.csv.gz -> clicks.csv), for detection."""
  for suffix in _COMPRESSION_SUFFIXES:
    if path.lower().endswith(suffix):
      return path[:-len(suffix)]
  return path


def read_bytes(path: str) -> bytes:
  if not path:
    raise InputError("--data_path: no data file given")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, expected a click-log file")
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise InputError(f"{path}: cannot read: {e.strerror}") from None
  codec = next((c for magic, c in _COMPRESSION.items() if raw.startswith(magic)), None)
  if codec:
    raw = _decompress(path, codec)
  if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Excel's "CSV UTF-8") is no id
    raw = raw[3:]
  if not raw or raw.isspace():  # isspace stops at the first other byte; strip would copy the file
    raise InputError(f"{path}: file is empty")
  return raw


def _decompress(path: str, codec: str) -> bytes:
  import pyarrow as pa
  try:
    with pa.input_stream(path, compression=codec) as stream:
      return stream.read()
  except (pa.ArrowException, OSError) as e:
    raise InputError(f"{path}: not a readable {codec} file ({' '.join(str(e).split())[:200]})") from None


def _looks_parquet(path: str) -> bool:
  if os.path.isdir(path):
    return bool(arrow_log.parquet_files(path))
  try:
    with open(path, "rb") as f:
      return f.read(4) == b"PAR1"
  except OSError:
    return False


def _line_of(raw: bytes, offset: int) -> int:
  return raw.count(b"\n", 0, offset) + 1


def _check_text(path: str, raw: bytes) -> None:
  nul = raw.find(b"\x00")
  if nul >= 0:
    raise InputError(f"{path}:{_line_of(raw, nul)}: NUL byte in a text file")
  try:
    raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"{path}:{_line_of(raw, e.start)}: not valid UTF-8 text") from None


def detect_format(path: str, raw: bytes, user_col: str = "user", item_col: str = "item") -> str:
  """Guesses the format from the file name and its first lines; errors when ambiguous."""
  if path.lower().endswith((".csv", ".tsv")) or _header_separator(raw, user_col, item_col):
    return "csv"
  lines = [l for l in raw[:1 << 20].split(b"\n")[:2000] if l.strip()]
  if lines and b":" in lines[0] and b"[" in lines[0]:
    return "note"
  counts = [len(l.replace(b",", b" ").split()) for l in lines]
  if max(counts) > 3:
    return "sequences"
  first_tokens = [l.replace(b",", b" ").split()[0] for l in lines]
  if len(set(first_tokens)) < len(first_tokens):
    return "pairs"
  raise InputError(f"{path}: cannot tell the format from the first lines; pass --data_format="
                   "note|sequences|pairs|csv")


def _header_separator(raw: bytes, user_col: str, item_col: str) -> str | None:
  """The separator that splits the first line into fields naming both id columns, if one does."""
  first = raw[:raw.find(b"\n")] if b"\n" in raw[:1 << 16] else raw[:1 << 16]
  try:
    header = first.decode("utf-8").strip()
  except UnicodeDecodeError:
    return None
  for sep in SEPARATORS.values():
    fields = [f.strip().strip('"') for f in header.split(sep)]
    if user_col in fields and item_col in fields:
      return sep
  return None


def _csv_separator(path: str, raw: bytes, separator: str, user_col: str, item_col: str) -> str:
  """--separator's character; auto: the header's (_header_separator), else a comma, whose
  missing-column error then names the header as read."""
  if separator != "auto":
    return SEPARATORS[separator]
  return _header_separator(raw, user_col, item_col) or ","


def _tokenize(raw: bytes, separators: bytes):
  """Splits `raw` into tokens at `separators` and newlines, vectorised.

  Returns (tokens as a fixed-width bytes array [T], 0-based line of each token [T],
  number of lines).
  """
  buf = np.frombuffer(raw, np.uint8)
  sep = np.zeros(256, bool)
  sep[list(separators + b"\r\n")] = True
  is_sep = sep[buf]
  newline = buf == ord("\n")
  starts = np.flatnonzero(~is_sep & np.concatenate([[True], is_sep[:-1]]))
  ends = np.flatnonzero(~is_sep & np.concatenate([is_sep[1:], [True]])) + 1
  newlines = np.flatnonzero(newline)
  token_lines = np.searchsorted(newlines, starts)
  lengths = ends - starts
  width = int(lengths.max()) if len(starts) else 1
  # Gather every token's bytes into a [T, width] matrix, zero-padded, viewed as S{width};
  # one column at a time keeps the temporaries at O(T).
  mat = np.zeros((len(starts), width), np.uint8)
  for c in range(width):
    inside = np.flatnonzero(lengths > c)
    mat[inside, c] = buf[starts[inside] + c]
  tokens = mat.view(f"S{width}").ravel()
  return tokens, token_lines, len(newlines) + 1


def _dense_ids(tokens: np.ndarray, first: int):
  """Raw byte tokens -> (sorted unique raw ids as unicode, dense ids starting at `first`)."""
  if _plain_integers(tokens):  # the common case: sorting int64 is several times faster
    uniq, inverse = np.unique(tokens.astype(np.int64), return_inverse=True)
    return uniq.astype(str), (inverse.reshape(-1) + first).astype(np.int64)
  uniq, inverse = np.unique(tokens, return_inverse=True)
  return np.char.decode(uniq, "utf-8"), (inverse.reshape(-1) + first).astype(np.int64)


def _plain_integers(tokens: np.ndarray) -> bool:
  """True if every token is a decimal integer without leading zeros that fits int64."""
  if not tokens.size or tokens.dtype.itemsize > 18 or not np.char.isdigit(tokens).all():
    return False
  return not (np.char.startswith(tokens, b"0") & (np.char.str_len(tokens) > 1)).any()


def _item_vocab(item_tokens: np.ndarray):
  ids, dense = _dense_ids(item_tokens, first=1)
  return np.concatenate([np.array([""], dtype=ids.dtype), ids]), dense.astype(np.int32)


def _one_user_per_line(path: str, tokens, token_lines, num_lines) -> ClickLog:
  """Lines of `user item item ...`: first token of each line is the user."""
  per_line = np.bincount(token_lines, minlength=num_lines)
  lonely = np.flatnonzero(per_line == 1)
  if len(lonely):
    raise InputError(f"{path}:{lonely[0] + 1}: a user with no items")
  line_start = np.concatenate([[0], np.cumsum(per_line)])[:-1]
  used = np.flatnonzero(per_line > 0)
  is_user = np.zeros(len(tokens), bool)
  is_user[line_start[used]] = True
  user_tokens = tokens[is_user]
  user_ids, user_dense = _dense_ids(user_tokens, first=0)
  if len(user_ids) < len(user_tokens):
    counts = np.bincount(user_dense)
    second = np.flatnonzero(counts[user_dense] > 1)[1]
    raise InputError(f"{path}:{used[second] + 1}: user {str(user_ids[user_dense[second]])!r} "
                     "appears on more than one line")
  item_ids, items = _item_vocab(tokens[~is_user])
  order = np.argsort(user_dense, kind="stable")  # lines sorted by dense user id
  lengths = per_line[used][order] - 1
  starts = (line_start[used] - np.arange(len(used)))[order]  # item offsets without user tokens
  indptr, gather = gather_ranges(starts, lengths)
  return ClickLog(user_ids, item_ids, indptr, items[gather])


def _parse_sequences(path: str, raw: bytes) -> ClickLog:
  tokens, token_lines, num_lines = _tokenize(raw, b" \t,")
  return _one_user_per_line(path, tokens, token_lines, num_lines)


def _parse_note(path: str, raw: bytes) -> ClickLog:
  for number, line in enumerate(raw.split(b"\n"), 1):
    if line.strip() and not _NOTE_LINE.match(line):
      raise InputError(f"{path}:{number}: expected `user:[item,item,...]`, got {_preview(line)}")
  tokens, token_lines, num_lines = _tokenize(raw, b" \t,:[]")
  return _one_user_per_line(path, tokens, token_lines, num_lines)


def _parse_pairs(path: str, raw: bytes) -> ClickLog:
  tokens, token_lines, num_lines = _tokenize(raw, b" \t,")
  per_line = np.bincount(token_lines, minlength=num_lines)
  used = per_line[per_line > 0]
  bad = np.flatnonzero((per_line > 0) & ((per_line < 2) | (per_line > 3) | (per_line != used[0])))
  if len(bad):
    line = raw.split(b"\n")[bad[0]]
    raise InputError(f"{path}:{bad[0] + 1}: expected `user item [timestamp]` with the same number "
                     f"of fields on every line, got {_preview(line)}")
  width = int(used[0])
  fields = tokens.reshape(-1, width)
  lines = token_lines[::width]
  times = None
  if width == 3:
    times = _to_times(path, fields[:, 2], lines)
  return _dense_columns(path, fields[:, 0], fields[:, 1], times, lines)


def _to_times(path, values, lines) -> np.ndarray:
  try:
    return to_seconds(values)
  except ValueError:
    bad = first_bad_time(values)
    raise InputError(f"{path}:{lines[bad] + 1}: timestamp {values[bad].decode(errors='replace')!r} "
                     "is not a number or an ISO-8601 date/time") from None


def _parse_csv(path: str, raw: bytes, user_col: str, item_col: str, time_col: str, delimiter: str = ","):
  _check_text(path, raw)
  reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), delimiter=delimiter)
  header = next(reader, None)
  wanted = {"--user_col": user_col, "--item_col": item_col}
  if time_col:
    wanted["--time_col"] = time_col
  for flag, name in wanted.items():
    if name not in header:
      raise InputError(f"{path}:1: no column {name!r} ({flag}) in the header {delimiter.join(header)!r}")
  columns = [header.index(name) for name in wanted.values()]
  rows, lines = [], []
  for row in reader:
    if not row or not any(cell.strip() for cell in row):
      continue
    if len(row) != len(header):
      raise InputError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
    rows.append([row[c].strip() for c in columns])
    lines.append(reader.line_num - 1)
  if not rows:
    raise InputError(f"{path}: no data rows under the header")
  table = np.array(rows, dtype=str)
  encode = lambda a: np.char.encode(a, "utf-8")
  lines = np.array(lines)
  times = _to_times(path, encode(table[:, 2]), lines) if time_col else None
  return _dense_columns(path, encode(table[:, 0]), encode(table[:, 1]), times, lines)


def _dense_columns(path, user_tokens, item_tokens, times, lines):
  """The line readers' clicks as the Arrow readers give theirs (arrow_log.Columns), each row
  named by its line (0-based `lines`) for _handle_nulls."""
  user_ids, users = _dense_ids(user_tokens, first=0)
  item_ids, items = _dense_ids(item_tokens, first=0)
  return arrow_log.Columns(user_ids, users, item_ids, items, times, lambda row: f"{path}:{lines[row] + 1}")


def _handle_nulls(path: str, columns, nulls: str):
  """--nulls on a tabular log's columns: a click with a null user, item or time is refused at
  its file and line, or (drop) left out and counted. Returns _group_dense's arguments."""
  user_ids, users, item_ids, items, times, where = columns
  null_users, null_items = null_mask(user_ids), null_mask(item_ids)
  bad = null_users[users] | null_items[items]
  if times is not None:
    bad |= np.isnan(times)
  if not bad.any():
    return user_ids, users, item_ids, items, times
  if nulls == "refuse":
    row = int(np.argmax(bad))
    what, value = (("user id", user_ids[users[row]]) if null_users[users[row]] else
                   ("item id", item_ids[items[row]]) if null_items[items[row]] else ("time", None))
    shown = "no time" if value is None else (f"empty {what}" if not value.strip() else f"{what} {str(value)!r}")
    raise InputError(f"{where(row)}: {shown}, a null; --nulls=drop leaves such clicks out")
  keep = ~bad
  console.info("%s: left out %d of %d clicks with a null user, item or time (--nulls=drop)", path,
               int(bad.sum()), len(bad))
  if not keep.any():
    raise InputError(f"{path}: every click has a null user, item or time")
  (user_ids, users), (item_ids, items) = (_renumbered(user_ids, users[keep]), _renumbered(item_ids, items[keep]))
  return user_ids, users, item_ids, items, None if times is None else times[keep]


def _renumbered(ids: np.ndarray, dense: np.ndarray):
  """(ids still used, dense ids into them): the order of ids is kept."""
  used = np.flatnonzero(np.bincount(dense, minlength=len(ids)))
  new = np.zeros(len(ids), dense.dtype)
  new[used] = np.arange(len(used), dtype=dense.dtype)
  return ids[used], new[dense]


def _group_dense(user_ids, users, item_ids, items, times) -> ClickLog:
  """One click per row (dense 0-based ids; items get padding row 0 here) -> users' sequences,
  sorted by time (stable: file order on ties)."""
  item_ids = np.concatenate([np.array([""], dtype=item_ids.dtype), item_ids])
  items = items.astype(np.int32, copy=False)  # the readers' own array: shifted in place
  items += 1
  order = _click_order(users, times)  # by user, then time, then file order; None: as they are
  counts = np.bincount(users, minlength=len(user_ids))
  indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  del users
  if order is None:
    return ClickLog(user_ids, item_ids, indptr, items, times)
  items = items[order]
  return ClickLog(user_ids, item_ids, indptr, items, None if times is None else times[order])


def _click_order(users: np.ndarray, times: np.ndarray | None) -> np.ndarray | None:
  """The stable order by (user, time) of the clicks, or None where they are in it already.

  With integral times whose span fits, one stable sort of the key user * (span + 1) +
  (time - first), exact in float64 below 2^53, stands in for two.
  """
  if times is None:
    return None if bool((users[1:] >= users[:-1]).all()) else np.argsort(users, kind="stable")
  low, span = float(times.min()), float(times.max() - times.min())
  if np.isfinite(span) and (float(users.max()) + 1) * (span + 1) < 2.0**53 and bool((times == np.floor(times)).all()):
    key = users.astype(np.float64)  # in place: one float64 array as long as the log, not three
    key *= span + 1
    key -= low  # before adding the times: every partial result stays an integer below 2^53
    key += times
    return None if bool((key[1:] >= key[:-1]).all()) else np.argsort(key, kind="stable")
  order = np.argsort(times, kind="stable")
  return order[np.argsort(users[order], kind="stable")]


def _preview(line: bytes) -> str:
  text = line.decode("utf-8", errors="replace").strip()
  return repr(text[:60] + ("..." if len(text) > 60 else ""))


# ----------------------------------------------------------------------------- synthetic


def synthetic_click_log(num_users: int = 5000, num_items: int = 1000, seed: int = 0,
                        mean_length: int = 15, follow_prob: float = 0.7) -> ClickLog:
  """A learnable click log: Zipf popularity plus a hidden next-item Markov chain.

  Each item has three fixed successors. A user starts at a popular item; each next
  click follows one of the current item's successors with `follow_prob`, else it is a
  fresh popular item. A sequence model learns the chain and clearly beats most-popular.
  """
  rng = np.random.default_rng(seed)
  popularity = 1.0 / np.arange(1, num_items + 1) ** 1.05
  popularity /= popularity.sum()
  successors = rng.integers(0, num_items, size=(num_items, 3))  # uniform: not just popularity
  lengths = np.clip(rng.geometric(1.0 / mean_length, num_users) + 2, 3, 8 * mean_length)
  max_len = int(lengths.max())
  seqs = np.empty((num_users, max_len), np.int64)
  seqs[:, 0] = rng.choice(num_items, size=num_users, p=popularity)
  for t in range(1, max_len):
    follow = rng.random(num_users) < follow_prob
    nxt = successors[seqs[:, t - 1], rng.integers(0, 3, num_users)]
    fresh = rng.choice(num_items, size=num_users, p=popularity)
    seqs[:, t] = np.where(follow, nxt, fresh)
  keep = np.arange(max_len)[None, :] < lengths[:, None]
  indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  user_ids = np.array([f"u{u}" for u in range(num_users)])
  item_ids = np.array([""] + [f"i{i}" for i in range(num_items)])
  return ClickLog(user_ids, item_ids, indptr, (seqs[keep] + 1).astype(np.int32))


def describe(log: ClickLog, seq_length: int) -> str:
  """Lines on a log's shape: sizes, history lengths, the padding of `seq_length`, top items."""
  lengths = log.lengths()
  counts = np.bincount(log.items, minlength=log.num_items)[1:]
  top = np.argsort(-counts, kind="stable")[:10]
  used = np.minimum(lengths, seq_length)
  p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
  return "\n".join([
      f"{log.num_users:,} users, {log.num_items - 1:,} items, {len(log.items):,} clicks"
      f"{', with timestamps' if log.times is not None else ''}",
      f"clicks per user: mean {lengths.mean():.1f}, median {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, "
      f"max {lengths.max()}",
      f"--seq_length={seq_length}: {1 - used.sum() / (len(used) * seq_length):.1%} of the slots are padding; "
      f"{np.mean(lengths > seq_length):.1%} of users have more clicks than it reads",
      "most clicked: " + ", ".join(f"{log.item_ids[i + 1]} ({counts[i]:,})" for i in top)])
