"""Item side features (--item_features): what the catalog knows about each item besides its id.

Formats (chosen by the path; one value may be any string without whitespace or separator):
  text     `item value value ...` lines, one item a line (the S3-Rec attribute files): one field,
           "values". An item with no value after it has no features.
  csv      (.csv/.tsv, optionally compressed as the click log may be) a header naming --feature_item_col
           and one or more feature columns, each a field; the field separator is taken from the
           header (comma, tab, semicolon or pipe); a cell holds several values separated by
           --feature_separator (default `|`); an empty cell or a null token holds none.
  parquet  (.parquet file or a directory of them) --feature_item_col and feature columns; a list
           column's cells are several values, any other column's cell one value (nulls: none).

An item's features are a set of values per field. The table is matched to the model's vocabulary
by raw item id: items the log never clicks become cold rows of the vocabulary (`with_cold_items`),
log items the table lacks keep the id path alone. Shape key: I item table rows (0 = padding),
V most values an item has in a field.
"""

import dataclasses
import os

import numpy as np

from jaxrec import arrow_log
from jaxrec import click_log
from jaxrec import clicks
from jaxrec import console
from jaxrec.clicks import ClickLog
from jaxrec.config import SEPARATORS, FeaturesConfig
from jaxrec.errors import InputError
from jaxrec.fileio import atomic_path

FILENAME = "features.npz"
TEXT_FIELD = "values"
_CSV_SUFFIXES = (".csv", ".tsv")
_COMPRESSED = (".gz", ".bz2", ".zst")


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureTable:
  """A feature file as read: raw item ids [n] and, per field, each item's values (tuples of str)."""
  path: str
  item_ids: np.ndarray
  fields: tuple  # field names
  values: tuple  # per field: a list of n tuples of value strings


@dataclasses.dataclass(frozen=True, eq=False)
class ItemFeatureRows:
  """The features of a model's item rows: what the model embeds.

  `values[f]` [I, V_f] int32: row r's value ids in field f (1-based into `vocab[f]`, 0 pads);
  `warm` [I] bool: rows whose id vector is used (items the training log clicks); a cold row's
  vector is its features alone. Row 0 (padding) has no value and counts as warm."""
  fields: tuple
  vocab: tuple  # per field: [n_f] value strings, sorted; value id v is vocab[f][v - 1]
  values: tuple
  warm: np.ndarray

  @property
  def sizes(self) -> tuple:
    """Rows of each field's value table, padding row 0 included (ModelConfig.feature_sizes)."""
    return tuple(len(v) + 1 for v in self.vocab)

  def fingerprint(self) -> str:
    import hashlib
    h = hashlib.sha256()
    for name, vocab, values in zip(self.fields, self.vocab, self.values):
      h.update(name.encode() + b"\0" + "\n".join(vocab.tolist()).encode() + b"\0" + values.tobytes())
    h.update(self.warm.tobytes())
    return h.hexdigest()


def _format(path: str) -> str:
  name = path.lower()
  for suffix in _COMPRESSED:
    name = name.removesuffix(suffix)
  if os.path.isdir(path) or name.endswith(".parquet"):
    return "parquet"
  if name.endswith(_CSV_SUFFIXES):
    return "csv"
  if name.endswith((".txt", ".dat")) or "." not in os.path.basename(name):
    return "text"
  raise InputError(f"--item_features={path}: unknown format (expected `item value ...` lines in .txt, "
                   f"a header and columns in .csv/.tsv, or .parquet)")


def read(cfg: FeaturesConfig) -> FeatureTable:
  """The table at cfg.item_features; InputError (one line, naming file and line) on a bad one."""
  path = cfg.item_features
  if not os.path.exists(path):
    raise InputError(f"--item_features={path}: no such file or directory")
  kind = _format(path)
  with console.slow(f"reading {path}"):
    if kind == "parquet":
      table = _read_parquet(path, cfg)
    else:
      raw = click_log.read_bytes(path)  # gzip, bz2 and zstd by their magic bytes, as for clicks
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text") from None
      table = _read_text(path, text) if kind == "text" else _read_csv(path, text, cfg)
  if not len(table.item_ids):
    raise InputError(f"{path}: no items (an empty feature table)")
  if not any(v for field in table.values for v in field):
    raise InputError(f"{path}: no item has a feature value")
  return table


def _merge(path: str, items: list, values: list, lines: list, fields: tuple) -> FeatureTable:
  """One entry per item: a repeated item must repeat its values (in any order)."""
  first, order = {}, []
  for k, item in enumerate(items):
    if item in first:
      j = first[item]
      if any(set(values[f][j]) != set(values[f][k]) for f in range(len(fields))):
        raise InputError(f"{path}:{lines[k]}: item {item!r} again with other values than on line {lines[j]}")
      continue
    first[item] = k
    order.append(k)
  return FeatureTable(path, np.array([items[k] for k in order], dtype=str), fields,
                      tuple([tuple(dict.fromkeys(values[f][k])) for k in order] for f in range(len(fields))))


def _read_text(path: str, text: str) -> FeatureTable:
  items, values, lines = [], [], []
  for number, line in enumerate(text.splitlines(), 1):
    tokens = line.split()
    if not tokens:
      continue
    items.append(tokens[0])
    values.append(tuple(tokens[1:]))
    lines.append(number)
  return _merge(path, items, [values], lines, (TEXT_FIELD,))


def _cells(column: list, separator: str) -> list:
  out = []
  for cell in column:
    cell = "" if cell is None else str(cell).strip()
    out.append(() if clicks.null_mask(np.array([cell]))[0] else
               tuple(v.strip() for v in cell.split(separator) if v.strip()))
  return out


def _read_csv(path: str, text: str, cfg: FeaturesConfig) -> FeatureTable:
  import csv
  import io
  lines = text.splitlines()
  if not lines or not lines[0].strip():
    raise InputError(f"{path}:1: no header line (a CSV feature table starts with its column names)")
  header = lines[0]
  delimiter = next((s for s in SEPARATORS.values() if cfg.feature_item_col in [c.strip().strip('"') for c in header.split(s)]), None)
  if delimiter is None:
    raise InputError(f"{path}:1: no column {cfg.feature_item_col!r} (--feature_item_col) in the header {header[:200]!r}")
  if delimiter == cfg.feature_separator:
    raise InputError(f"{path}:1: the fields are separated by {delimiter!r}, which is also --feature_separator: "
                     "choose another --feature_separator")
  rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
  names = [c.strip() for c in rows[0]]
  if len(names) < 2:
    raise InputError(f"{path}:1: no feature column besides {cfg.feature_item_col!r}")
  item_at = names.index(cfg.feature_item_col)
  fields = tuple(n for i, n in enumerate(names) if i != item_at)
  items, columns, numbers = [], [[] for _ in fields], []
  for number, row in enumerate(rows[1:], 2):
    if not row or not any(c.strip() for c in row):
      continue
    if len(row) != len(names):
      raise InputError(f"{path}:{number}: {len(row)} fields, the header has {len(names)}")
    item = row[item_at].strip()
    if clicks.null_mask(np.array([item]))[0]:
      raise InputError(f"{path}:{number}: no item id")
    items.append(item)
    numbers.append(number)
    for f, cell in enumerate(c for i, c in enumerate(row) if i != item_at):
      columns[f].append(cell)
  return _merge(path, items, [_cells(c, cfg.feature_separator) for c in columns], numbers, fields)


def _read_parquet(path: str, cfg: FeaturesConfig) -> FeatureTable:
  import pyarrow as pa
  import pyarrow.parquet as pq
  files = arrow_log.parquet_files(path) if os.path.isdir(path) else [path]
  if not files:
    raise InputError(f"--item_features={path}: no .parquet files in the directory")
  try:
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
  except (OSError, pa.ArrowInvalid) as e:
    raise InputError(f"--item_features={path}: not a readable Parquet table ({' '.join(str(e).split())[:200]})") from None
  if cfg.feature_item_col not in table.column_names:
    raise InputError(f"{path}: no column {cfg.feature_item_col!r} (--feature_item_col); it has "
                     f"{', '.join(table.column_names)}")
  fields = tuple(n for n in table.column_names if n != cfg.feature_item_col)
  if not fields:
    raise InputError(f"{path}: no feature column besides {cfg.feature_item_col!r}")
  items = table.column(cfg.feature_item_col).to_pylist()
  for k, item in enumerate(items):
    if item is None:
      raise InputError(f"{path}: row {k + 1}: no item id")
  items = [str(i) for i in items]
  values = []
  for name in fields:
    column = table.column(name)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
      values.append([() if cell is None else tuple(str(v) for v in cell if v is not None)
                     for cell in column.to_pylist()])
    else:
      values.append([() if cell is None else (str(cell),) for cell in column.to_pylist()])
  return _merge(path, items, values, [f"row {k + 1}" for k in range(len(items))], fields)


def with_cold_items(log: ClickLog, table: FeatureTable) -> tuple[ClickLog, int]:
  """The log with the table's items it never clicks appended to its item vocabulary (no clicks):
  the cold items, which the model then scores by their features; and their count."""
  known = set(log.item_ids[1:].tolist())
  cold = [i for i in table.item_ids.tolist() if i not in known]
  if not cold:
    return log, 0
  item_ids = np.concatenate([log.item_ids, np.array(cold, dtype=str)])
  return dataclasses.replace(log, item_ids=item_ids), len(cold)


def rows(table: FeatureTable, item_ids: np.ndarray, warm: np.ndarray,
         base: ItemFeatureRows | None = None) -> ItemFeatureRows:
  """The table's features of each row of `item_ids` (a vocabulary, padding first); `warm` [I].

  With `base` (the rows of the model a warm start or a resume begins from), each field's values
  keep their ids and the table's new values are appended, sorted: the value tables grow as the
  item tables do."""
  if base is not None and tuple(base.fields) != tuple(table.fields):
    raise InputError(f"--item_features={table.path}: fields {', '.join(table.fields)}, but the model it continues "
                     f"has {', '.join(base.fields)}")
  where = {item: k for k, item in enumerate(table.item_ids.tolist())}
  at = [where.get(item, -1) for item in item_ids.tolist()]
  at[0] = -1
  vocabs, matrices = [], []
  for f in range(len(table.fields)):
    per_item = table.values[f]
    values = {v for k in at if k >= 0 for v in per_item[k]}
    old = base.vocab[f].tolist() if base is not None else []
    vocab = np.array(old + sorted(values - set(old)), dtype=str)
    index = {v: i + 1 for i, v in enumerate(vocab.tolist())}
    width = max([len(per_item[k]) for k in at if k >= 0] + [1])
    matrix = np.zeros((len(item_ids), width), np.int32)
    for r, k in enumerate(at):
      if k >= 0 and per_item[k]:
        matrix[r, :len(per_item[k])] = [index[v] for v in per_item[k]]
    vocabs.append(vocab)
    matrices.append(matrix)
  warm = np.asarray(warm, bool).copy()
  warm[0] = True  # padding keeps its id row, as in the id-only model (whose outputs it then equals)
  return ItemFeatureRows(table.fields, tuple(vocabs), tuple(matrices), warm)


def describe(table: FeatureTable, log_item_ids: np.ndarray, cold: int) -> str:
  """What matching the table to the log did, counted: said before training."""
  in_table = set(table.item_ids.tolist())
  without = sum(1 for i in log_item_ids[1:].tolist() if i not in in_table)
  values = sum(len({v for vs in field for v in vs}) for field in table.values)
  return (f"item features from {table.path}: {len(table.item_ids)} items, {len(table.fields)} field"
          f"{'s' if len(table.fields) != 1 else ''} ({', '.join(table.fields)}), {values} distinct values; "
          f"{cold} items only the table names (cold: added to the catalog), {without} clicked items without "
          f"features (id only)")


def save(features: ItemFeatureRows, path: str) -> None:
  arrays = {"fields": np.array(features.fields, dtype=str), "warm": features.warm}
  for f in range(len(features.fields)):
    arrays[f"vocab_{f}"] = features.vocab[f]
    arrays[f"values_{f}"] = features.values[f]
  with atomic_path(path, suffix=".npz") as tmp:
    np.savez(tmp, **arrays)


def load(path: str) -> ItemFeatureRows:
  try:
    with np.load(path, allow_pickle=False) as npz:
      fields = tuple(npz["fields"].tolist())
      return ItemFeatureRows(fields, tuple(npz[f"vocab_{f}"] for f in range(len(fields))),
                             tuple(npz[f"values_{f}"] for f in range(len(fields))), npz["warm"])
  except (OSError, KeyError, ValueError) as e:
    raise InputError(f"{path}: not a jaxrec feature table ({e})") from None


def path_in(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)
