"""Recall lists to files for downstream jobs (no JAX, no faiss), in the format the path's
suffix names (FORMATS), written chunk by chunk into a temporary file that is renamed when
complete."""

import csv
import json
import os

import numpy as np

from jaxrec import errors
from jaxrec import fileio

# An output's suffix (any case) names its format; check_paths refuses any other suffix, as
# every other one used to get TSV silently (an `r.csv` that no CSV reader could read).
FORMATS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
SUFFIXES = ".tsv or .txt (TSV), .csv, .jsonl or .parquet"


def output_format(path: str) -> str | None:
  """The FORMATS value `path`'s suffix names; None for any other suffix or none."""
  return FORMATS.get(os.path.splitext(path)[1].lower())


class ListWriter:
  """`with ListWriter(path, item_ids, with_scores) as w: w.write(users, items, scores)` per chunk.

  One row per user, items best first; index -1 (fewer items than asked) is left out of a list.
  TSV: `user<TAB>item1,item2,...` (`item:score` pairs with scores). CSV (RFC 4180, CRLF):
  header `user,items[,scores]`, the items comma-joined in one field, the scores likewise.
  JSONL: `{"user": ..., "items": [...], "scores": [...]}` a line. Parquet: columns `user`
  (string), `items` (list of string) and, with scores, `scores` (list of float32), one row
  group per chunk. Text formats write scores as %.9g, which reads back as the same float32.
  """

  def __init__(self, path: str, item_ids: np.ndarray, with_scores: bool):
    self.path, self.with_scores = path, with_scores
    self.format = output_format(path)
    if self.format is None:
      raise errors.InputError(f"{path}: no output format has this suffix; use {SUFFIXES}")
    names = np.asarray(item_ids, dtype=object)
    # A comma-joined list splits back into its ids only if none holds a comma (load_embeddings
    # refuses such ids; this guards other callers).
    if self.format == "csv" and any("," in name for name in names.tolist()):
      raise errors.InputError(f"{path}: an item id holds a comma, which a .csv list cannot hold")
    if self.format == "jsonl":  # each id as a JSON string once, not per user
      names = np.array([json.dumps(name, ensure_ascii=False) for name in names.tolist()], object)
    self.names = np.append(names, "")  # index -1 (no item) -> ""

  def __enter__(self):
    with errors.writing(self.path, "nothing was written there"):
      self._atomic = fileio.atomic_path(self.path)
      self._tmp = self._atomic.__enter__()
      if self.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        fields = [("user", pa.string()), ("items", pa.list_(pa.string()))]
        fields += [("scores", pa.list_(pa.float32()))] if self.with_scores else []
        self._file = pq.ParquetWriter(self._tmp, pa.schema(fields))
      else:  # newline="": no translation, rows end as each format writes them (CSV: CRLF)
        self._file = open(self._tmp, "w", encoding="utf-8", newline="")
        if self.format == "csv":
          self._csv = csv.writer(self._file)  # RFC 4180: quotes a field holding `,` `"` CR or LF
          self._csv.writerow(["user", "items"] + (["scores"] if self.with_scores else []))
    return self

  def write(self, user_ids: np.ndarray, items_UxN: np.ndarray, scores_UxN: np.ndarray | None) -> None:
    with errors.writing(self.path, "nothing was written there"):
      if self.format == "parquet":
        self._write_parquet(user_ids, items_UxN, scores_UxN)
      else:
        self._write_text(user_ids, items_UxN, scores_UxN)

  def _write_text(self, user_ids, items_UxN, scores_UxN):
    keep_UxN = items_UxN >= 0
    names_UxN = self.names[items_UxN]
    if self.with_scores:
      texts_UxN = np.char.mod("%.9g", scores_UxN).astype(object)
      if self.format == "jsonl":  # a whole score, "3", would read back as an int: "3.0" as a float
        texts_UxN[(scores_UxN == np.trunc(scores_UxN)) & (np.abs(scores_UxN) < 1e9)] += ".0"
    users = user_ids.tolist()
    if self.format == "tsv":
      cells_UxN = names_UxN + ":" + texts_UxN if self.with_scores else names_UxN
      self._file.writelines(f"{user}\t{cells}\n" for user, cells in zip(users, _joined(cells_UxN, keep_UxN)))
      return
    lists = [_joined(names_UxN, keep_UxN)] + ([_joined(texts_UxN, keep_UxN)] if self.with_scores else [])
    if self.format == "csv":
      self._csv.writerows(zip(users, *lists))
      return
    # JSONL: self.names are JSON strings already, and %.9g of a finite score is a JSON number.
    for user, *row in zip(users, *lists):
      fields = "".join(f', "{key}": [{value}]' for key, value in zip(("items", "scores"), row))
      self._file.write(f'{{"user": {json.dumps(user, ensure_ascii=False)}{fields}}}\n')

  def _write_parquet(self, user_ids, items_UxN, scores_UxN):
    import pyarrow as pa
    keep_UxN = items_UxN >= 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(keep_UxN.sum(axis=1))]).astype(np.int32))
    columns = [pa.array(user_ids.tolist(), pa.string()),
               pa.ListArray.from_arrays(offsets, pa.array(self.names[items_UxN[keep_UxN]].tolist(), pa.string()))]
    if self.with_scores:
      columns.append(pa.ListArray.from_arrays(offsets, pa.array(scores_UxN[keep_UxN].astype(np.float32))))
    self._file.write_table(pa.Table.from_arrays(columns, schema=self._file.schema))

  def __exit__(self, *exc):
    with errors.writing(self.path, "nothing was written there"):
      try:
        self._file.close()
      finally:
        self._atomic.__exit__(*exc)  # renames on success, removes the temporary file on failure


def _joined(cells_UxN: np.ndarray, keep_UxN: np.ndarray) -> list[str]:
  """Each row's kept cells, comma-joined."""
  rows = cells_UxN.tolist()
  for u in np.flatnonzero(~keep_UxN.all(axis=1)):  # the few lists cut short
    rows[u] = cells_UxN[u, keep_UxN[u]].tolist()
  return [",".join(row) for row in rows]


def write_recall(path: str, user_ids: np.ndarray, item_ids: np.ndarray,
                 items_UxN: np.ndarray, scores_UxN: np.ndarray | None = None):
  """All the lists at once (see ListWriter)."""
  with ListWriter(path, item_ids, scores_UxN is not None) as writer:
    writer.write(user_ids, items_UxN, scores_UxN)
