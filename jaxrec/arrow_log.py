"""Click tables through Apache Arrow: CSV (pyarrow.csv, multi-threaded) and Parquet files or
directories of them (a table export).

Ids become dense ids by Arrow's dictionary encoding, so no Python object is made per
click: only one per distinct user or item id. Raw ids sort as click_log's readers sort
them (as integers when every id is a plain decimal integer, else by their UTF-8 bytes),
so a log reads into the same vocabulary whatever its format.
"""

import os
from typing import Callable, NamedTuple

import numpy as np

from jaxrec.clicks import NULL_TOKENS, first_bad_time, null_mask, to_seconds
from jaxrec.errors import InputError

_PLAIN_INTEGER = r"^(0|[1-9][0-9]{0,17})$"  # fits int64, no leading zeros
_BLOCK = 1 << 24  # CSV bytes per parsing block: Arrow's 1 MiB default parses string columns half as fast


def _id_type():
  """Ids as the CSV parser's own dictionary-encoded strings: unifying its per-block dictionaries
  costs less than hashing every parsed string again."""
  import pyarrow as pa
  return pa.dictionary(pa.int32(), pa.string())


class Columns(NamedTuple):
  """A tabular log read: raw ids [K] and dense 0-based ids [N] of users and items, float64
  seconds [N] (NaN: a null time) or None; `where(row)` names a row's file and line or row.
  An id may be a null token: click_log._handle_nulls applies --nulls."""
  user_ids: np.ndarray
  users: np.ndarray
  item_ids: np.ndarray
  items: np.ndarray
  times: np.ndarray | None
  where: Callable[[int], str]


class Unreadable(Exception):
  """Arrow would not read the CSV as it stands; the line-by-line reader will (or names the line)."""


def read_csv(path: str, raw: bytes, user_col: str, item_col: str, time_col: str, delimiter: str = ","):
  """The Columns of a CSV with a header line, fields separated by `delimiter`.

  Raises Unreadable where Arrow refuses the file or a row is malformed (whitespace-only
  lines, ragged rows, a time that is not one): the line-by-line reader then reads it or
  names the line.
  """
  import pyarrow as pa
  from pyarrow import csv as pa_csv
  columns = [user_col, item_col] + ([time_col] if time_col else [])
  try:
    table = pa_csv.read_csv(
        pa.BufferReader(raw), read_options=pa_csv.ReadOptions(block_size=_BLOCK),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
        convert_options=pa_csv.ConvertOptions(include_columns=columns, strings_can_be_null=False,
                                              column_types={user_col: _id_type(), item_col: _id_type()}))
    if table.num_rows == 0:
      raise Unreadable()
    columns = {name: table.column(name) for name in columns}
    del table  # _columns frees each column as it converts it
    return _columns(path, columns, user_col, item_col, time_col, lambda row: f"{path}:{_line_of_row(raw, row)}")
  except (pa.ArrowException, KeyError, InputError):
    raise Unreadable() from None


def _line_of_row(raw: bytes, row: int, header: bool = True) -> int:
  """The 1-based line of data row `row` (0-based) of an Arrow read: after the header, empty
  lines skipped as Arrow skips them (no field holds a newline: newlines_in_values is off)."""
  seen = -1
  for number, line in enumerate(raw.split(b"\n")[int(header):], 1 + int(header)):
    if line.rstrip(b"\r"):
      seen += 1
      if seen == row:
        return number
  raise ValueError(f"no data row {row}")


def read_pairs(path: str, raw: bytes):
  """`user item [time]` lines with one separator (tab, comma or space) through Arrow, as read_csv.

  Raises Unreadable for anything the vectorised line reader must decide (mixed or repeated
  separators, ragged or blank-with-spaces lines, bad timestamps): it reads those exactly.
  """
  import pyarrow as pa
  import pyarrow.compute as pc
  from pyarrow import csv as pa_csv
  first = raw[:raw.find(b"\n")].strip() if b"\n" in raw else raw.strip()
  delimiter = next((c for c in ("\t", ",", " ") if c.encode() in first), None)
  if delimiter is None:
    raise Unreadable()
  width = len(first.split(delimiter.encode()))
  if width not in (2, 3):
    raise Unreadable()
  names = ["user", "item", "time"][:width]
  try:
    table = pa_csv.read_csv(
        pa.BufferReader(raw), read_options=pa_csv.ReadOptions(column_names=names, block_size=_BLOCK),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False),
        convert_options=pa_csv.ConvertOptions(strings_can_be_null=False,
                                              column_types={"user": _id_type(), "item": _id_type()}))
    if _may_hide_fields(raw, delimiter.encode()):
      for name in ("user", "item"):  # another separator inside a field: the line reader splits there
        if any(pc.any(pc.match_substring_regex(chunk.dictionary, "[ \t,\r]")).as_py()
               for chunk in table.column(name).chunks):  # a chunk's dictionary: its values only
          raise Unreadable()
    if width == 3 and not (pa.types.is_integer(table.column("time").type)
                           or pa.types.is_floating(table.column("time").type)):
      raise Unreadable()
    columns = {name: table.column(name) for name in names}
    del table
    out = _columns(path, columns, "user", "item", "time" if width == 3 else "",
                   lambda row: f"{path}:{_line_of_row(raw, row, header=False)}")
    # An empty field is a doubled or trailing separator, not a null: the line reader splits it away.
    if "" in out.user_ids or "" in out.item_ids or (out.times is not None and np.isnan(out.times).any()):
      raise Unreadable()
    return out
  except (pa.ArrowException, KeyError, InputError):
    raise Unreadable() from None


def _may_hide_fields(raw: bytes, delimiter: bytes) -> bool:
  """False where no field can hold another separator: none of them (nor a carriage return)
  is anywhere in the file. One memchr a byte, 20x faster than the regex over every field that
  it spares. Empty fields (a doubled separator, one at a line's start or end) need no search:
  Arrow refuses the row's extra field, or _columns finds the empty id, and either way the line
  reader decides."""
  return any(c in raw for c in (b" ", b"\t", b",", b"\r") if c != delimiter)


def parquet_files(path: str) -> list:
  """The *.parquet files under directory `path`, in path order, as Spark and Hive write them:
  partition subdirectories (date=2026-12-01/) included; names starting with _ or . (_SUCCESS,
  _temporary/, .part-0.parquet.crc) left out."""
  files = []
  for root, dirs, names in os.walk(path):
    dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
    files += [os.path.join(root, n) for n in names if n.endswith(".parquet") and not n.startswith(("_", "."))]
  return sorted(files)


def item_ids_of_files(path: str, files: list, item_col: str) -> np.ndarray:
  """The distinct item ids of `files` (under directory `path`), as the readers spell them
  (null tokens left out), sorted: one pass over the item column alone, file by file, so memory
  grows with the catalog, not the log."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  seen = set()
  for file in files:
    partition = _partition_values(path, file)
    try:
      if item_col in partition:
        column = pa.chunked_array([pa.array([partition[item_col]])])
      else:
        column = pq.read_table(file, columns=[item_col]).column(0)
    except KeyError:
      raise InputError(f"{file}: no column {item_col!r} (--item_col)") from None
    except (pa.ArrowException, OSError) as e:
      raise InputError(f"{file}: not a readable Parquet file ({' '.join(str(e).split())[:200]})") from None
    column = column.drop_null()
    if not (pa.types.is_string(column.type) or pa.types.is_dictionary(column.type) or _is_integer(column)):
      column = column.cast("string")
    ids = np.asarray(dense_ids(column)[0], dtype=str) if len(column) else np.zeros(0, str)  # as _columns spells them
    seen.update(ids[~null_mask(ids)].tolist())
  return np.array(sorted(seen), dtype=str)


def _partition_values(path: str, file: str) -> dict:
  """The key=value directories between `path` and `file` (a Hive-partitioned table's columns)."""
  parts = os.path.relpath(os.path.dirname(file), path).split(os.sep) if file != path else []
  return dict(part.split("=", 1) for part in parts if "=" in part)


def read_parquet(path: str, user_col: str, item_col: str, time_col: str, files: list | None = None):
  """As read_csv, from one Parquet file or every Parquet file under a directory
  (parquet_files), or only `files` of that directory; a column may be a partition key of the
  directory names (date=...)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  if files is None:
    files = [path]
  if os.path.isdir(path) and files == [path]:
    files = parquet_files(path)
    if not files:
      raise InputError(f"{path}: a directory without .parquet files")
  columns = [user_col, item_col] + ([time_col] if time_col else [])
  schemas, offsets, partitions = [], [0], []
  for file in files:
    try:
      schema = pq.read_schema(file)
      partition = _partition_values(path, file)
      for flag, name in zip(("--user_col", "--item_col", "--time_col"), columns):
        if name not in schema.names and name not in partition:
          raise InputError(f"{file}: no column {name!r} ({flag}) among {', '.join(schema.names)}")
      schemas.append(pa.schema([schema.field(name) if name in schema.names else pa.field(name, pa.string())
                                for name in columns]))
      partitions.append({k: v for k, v in partition.items() if k not in schema.names})
      offsets.append(offsets[-1] + pq.ParquetFile(file).metadata.num_rows)
    except (pa.ArrowException, OSError) as e:
      raise InputError(f"{file}: not a readable Parquet file ({' '.join(str(e).split())[:200]})") from None
  try:
    schema = pa.unify_schemas(schemas, promote_options="permissive")
  except pa.ArrowException as e:
    raise InputError(f"{path}: its files' columns do not agree ({' '.join(str(e).split())[:200]})") from None
  if offsets[-1] == 0:
    raise InputError(f"{path}: no rows")
  offsets = np.asarray(offsets)

  def where(row: int) -> str:  # the file and its row, 1-based
    f = int(np.searchsorted(offsets, row, side="right")) - 1
    return f"{files[f]}: row {row - offsets[f] + 1}"
  return _columns(path, _ParquetColumns(files, schema, partitions, np.diff(offsets)), user_col, item_col,
                  time_col, where)


class _ParquetColumns:
  """The log's columns, each read from every file only when _columns pops it: one column of
  the log is in Arrow's memory at a time."""

  def __init__(self, files, schema, partitions, rows):
    self.files, self.schema, self.partitions, self.rows = files, schema, partitions, rows

  def pop(self, name: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    kind = self.schema.field(name).type
    chunks = []
    for file, partition, rows in zip(self.files, self.partitions, self.rows):
      if name in partition:
        chunks.append(pa.array([partition[name]], kind).take(np.zeros(rows, np.int64)))
        continue
      try:
        chunks += pq.read_table(file, columns=[name]).column(0).cast(kind).chunks
      except (pa.ArrowException, OSError) as e:
        raise InputError(f"{file}: not a readable Parquet file ({' '.join(str(e).split())[:200]})") from None
    return pa.chunked_array(chunks, kind)


def _columns(path, columns, user_col, item_col, time_col, where=None):
  """(user ids, dense users int32, item ids, dense items int32, times float64 or None) of the
  ChunkedArray columns, popped from `columns` one by one: with the table dropped by the caller,
  each column's memory goes as it is converted, so Arrow's copy of the log is never alive
  beside all of the numpy one."""
  import pyarrow as pa
  import pyarrow.compute as pc
  where = where or (lambda row: f"{path}: data row {row + 1}")
  ids = []
  for name in (user_col, item_col):
    column = columns.pop(name)
    if column.null_count or not (pa.types.is_string(column.type) or pa.types.is_dictionary(column.type)
                                 or _is_integer(column)):
      column = column.cast("string")
    if column.null_count:  # a missing id: "" is a null token (--nulls)
      column = pc.fill_null(column, "")
    ids.append(dense_ids(column))
    del column
    pa.default_memory_pool().release_unused()  # the allocator keeps freed pages otherwise
  times = None
  if time_col:
    times = _seconds(columns.pop(time_col), where)
    pa.default_memory_pool().release_unused()
  (user_ids, users), (item_ids, items) = ids
  return Columns(user_ids, users, item_ids, items, times, where)


def dense_ids(column):
  """An Arrow column of ids -> (sorted unique raw ids as unicode [K], dense int32 ids in 0..K-1 [N]).

  Hashing (dictionary encoding) then sorting the K distinct ids, not the N clicks; chunk by
  chunk, so only the int32 result is as long as the log. String ids lose surrounding
  whitespace, trimmed in the dictionary (K values, not N); an id left empty is the id ""
  (a null: click_log applies --nulls).
  """
  import pyarrow as pa
  import pyarrow.compute as pc
  if isinstance(column, pa.Array):
    column = pa.chunked_array([column])
  if pa.types.is_dictionary(column.type) and not pa.types.is_string(column.type.value_type):
    column = column.cast(column.type.value_type)
  if pa.types.is_dictionary(column.type):  # the CSV parser's: one dictionary a block
    encoded = column.unify_dictionaries()
  else:
    # The kernel encodes every chunk against one memo table, so the chunks share its final
    # dictionary; unify_dictionaries only where that ever fails to hold.
    encoded = pc.dictionary_encode(column)
    if len({len(chunk.dictionary) for chunk in encoded.chunks}) > 1:
      encoded = encoded.unify_dictionaries()
  dictionary, merged = encoded.chunks[-1].dictionary, None
  if not _is_integer(column):
    trimmed = pc.utf8_trim_whitespace(dictionary)
    if not pc.equal(trimmed, dictionary).to_numpy(zero_copy_only=False).all():
      merged = pc.dictionary_encode(trimmed)  # " a" and "a" are one id
      dictionary, merged = merged.dictionary, merged.indices.to_numpy()
  if _is_integer(column):
    order = np.argsort(dictionary.to_numpy(), kind="stable")
  elif pc.all(pc.match_substring_regex(dictionary, _PLAIN_INTEGER)).as_py():
    order = np.argsort(pc.cast(dictionary, "int64").to_numpy(), kind="stable")
  else:
    order = pc.array_sort_indices(dictionary).to_numpy()
  rank = np.empty(len(order), np.int32)
  rank[order] = np.arange(len(order), dtype=np.int32)
  if merged is not None:
    rank = rank[merged]
  dense = np.empty(len(column), np.int32)
  start = 0
  for chunk in encoded.chunks:
    dense[start:start + len(chunk)] = rank[chunk.indices.to_numpy()]
    start += len(chunk)
  return np.asarray(dictionary.take(order).to_pylist(), dtype=str), dense


def _is_integer(column) -> bool:
  import pyarrow as pa
  return pa.types.is_integer(column.type)


def _seconds(column, where) -> np.ndarray:
  """Timestamps as float64 seconds: numbers as they are, Arrow timestamps and ISO-8601 strings
  since 1970 (UTC)."""
  import pyarrow as pa
  import pyarrow.compute as pc
  if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
    seconds, start = np.empty(len(column), np.float64), 0
    for chunk in column.chunks:  # no int64 copy of the whole column beside the float64 one
      seconds[start:start + len(chunk)] = chunk.to_numpy(zero_copy_only=False)  # a null: NaN
      start += len(chunk)
    return seconds
  if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
    micros = pc.cast(pc.cast(pc.cast(column, pa.timestamp("us"), safe=False), pa.int64()), pa.float64())
    return micros.to_numpy(zero_copy_only=False) / 1e6  # a null: NaN
  text = pc.utf8_trim_whitespace(column.cast("string"))
  null = pc.or_(pc.is_null(text), pc.is_in(pc.utf8_lower(text), pa.array(NULL_TOKENS)))
  text = pc.if_else(null, pa.scalar(None, pa.string()), text)  # a null token: NaN below
  numbers = pc.match_substring_regex(text, r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
  if pc.all(numbers).as_py() is not False:
    return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
  try:
    stamps = pc.cast(pc.utf8_rtrim(text, characters="Z"), pa.timestamp("us"), safe=False)
    return pc.cast(pc.cast(stamps, pa.int64()), pa.float64()).to_numpy(zero_copy_only=False) / 1e6
  except pa.ArrowInvalid:  # forms Arrow does not parse (offsets, say): numpy's, or the row that fails
    values = np.asarray(pc.fill_null(text, "").to_pylist())  # "": NaN again in to_seconds
    try:
      return to_seconds(values)
    except ValueError:
      row = first_bad_time(values)
      raise InputError(f"{where(row)}: timestamp {values[row]!r} is not a number or an ISO-8601 "
                       "date/time") from None
