"""Recall lists to files for downstream jobs (no JAX, no faiss)."""

import numpy as np

from jaxrec import embeddings
from jaxrec import errors
from jaxrec import fileio


def write_recall(path: str, user_ids: np.ndarray, item_ids: np.ndarray,
                 items_UxN: np.ndarray, scores_UxN: np.ndarray | None = None):
  """Writes `user<TAB>item,...` (or `item:score,...`) lines, atomically."""
  names = np.append(np.asarray(item_ids, dtype=object), "")  # index -1 (no item) -> ""
  cells = names[items_UxN]
  if scores_UxN is not None:
    cells = np.where(items_UxN >= 0, cells + ":" + np.char.mod("%.9g", scores_UxN).astype(object), "")
  full = bool((items_UxN >= 0).all())
  try:
    with fileio.atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
      for user, row in zip(user_ids.tolist(), cells.tolist()):
        f.write(f"{user}\t{','.join(row if full else [c for c in row if c])}\n")
  except OSError as e:
    raise errors.InputError(f"cannot write {path}: {e.strerror or embeddings.one_line(e)}")
