"""Recall lists to files for downstream jobs (no JAX, no faiss): TSV, or Parquet for a
`.parquet` path, written chunk by chunk into a temporary file that is renamed when complete."""

import numpy as np

from jaxrec import errors
from jaxrec import fileio


class ListWriter:
  """`with ListWriter(path, item_ids, with_scores) as w: w.write(users, items, scores)` per chunk.

  TSV: `user<TAB>item1,item2,...` (`item:score` pairs with scores). Parquet: columns `user`
  (string), `items` (list of string) and, with scores, `scores` (list of float32), one
  row group per chunk. Index -1 (fewer items than asked) is left out of a list.
  """

  def __init__(self, path: str, item_ids: np.ndarray, with_scores: bool):
    self.path, self.with_scores = path, with_scores
    self.names = np.append(np.asarray(item_ids, dtype=object), "")  # index -1 (no item) -> ""
    self.parquet = path.endswith(".parquet")

  def __enter__(self):
    with errors.writing(self.path, "nothing was written there"):
      self._atomic = fileio.atomic_path(self.path)
      self._tmp = self._atomic.__enter__()
      if self.parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq
        fields = [("user", pa.string()), ("items", pa.list_(pa.string()))]
        fields += [("scores", pa.list_(pa.float32()))] if self.with_scores else []
        self._file = pq.ParquetWriter(self._tmp, pa.schema(fields))
      else:
        self._file = open(self._tmp, "w", encoding="utf-8", newline="\n")
    return self

  def write(self, user_ids: np.ndarray, items_UxN: np.ndarray, scores_UxN: np.ndarray | None) -> None:
    with errors.writing(self.path, "nothing was written there"):
      if self.parquet:
        self._write_parquet(user_ids, items_UxN, scores_UxN)
      else:
        self._write_tsv(user_ids, items_UxN, scores_UxN)

  def _write_tsv(self, user_ids, items_UxN, scores_UxN):
    cells = self.names[items_UxN]
    if self.with_scores:
      cells = np.where(items_UxN >= 0, cells + ":" + np.char.mod("%.9g", scores_UxN).astype(object), "")
    full = bool((items_UxN >= 0).all())
    for user, row in zip(user_ids.tolist(), cells.tolist()):
      self._file.write(f"{user}\t{','.join(row if full else [c for c in row if c])}\n")

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


def write_recall(path: str, user_ids: np.ndarray, item_ids: np.ndarray,
                 items_UxN: np.ndarray, scores_UxN: np.ndarray | None = None):
  """All the lists at once (see ListWriter)."""
  with ListWriter(path, item_ids, scores_UxN is not None) as writer:
    writer.write(user_ids, items_UxN, scores_UxN)
