"""The exported user and item vectors (`.npz`), loaded and checked: numpy only.

No JAX and no faiss here: `jaxrec.recall` reads these arrays in a light process.

Shapes: U users, I items, D embedding size, nnz visits.
"""

import dataclasses
import os
import zipfile

import numpy as np

from jaxrec import errors

ARRAYS = ("user_ids", "user_emb", "item_ids", "item_emb", "visited_indptr",
          "visited_indices")


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """The arrays of an exported `.npz` (validated by `load_embeddings`)."""
  user_ids: np.ndarray         # [U] str
  user_emb: np.ndarray         # [U, D] float32
  item_ids: np.ndarray         # [I] str
  item_emb: np.ndarray         # [I, D] float32
  visited_indptr: np.ndarray   # [U + 1] int64, CSR row pointers
  visited_indices: np.ndarray  # [nnz] int64, indices into item_ids

  def shard(self, num_shards: int, shard_index: int) -> "Embeddings":
    """The contiguous users [s*U//n, (s+1)*U//n); items are kept whole."""
    num_users = len(self.user_ids)
    lo = shard_index * num_users // num_shards
    hi = (shard_index + 1) * num_users // num_shards
    indptr = self.visited_indptr[lo:hi + 1]
    return dataclasses.replace(
        self, user_ids=self.user_ids[lo:hi], user_emb=self.user_emb[lo:hi],
        visited_indptr=indptr - indptr[0],
        visited_indices=self.visited_indices[indptr[0]:indptr[-1]])


def one_line(e: BaseException) -> str:
  """An exception's message on one line (or its type name if it has none)."""
  return " ".join(str(e).split()) or type(e).__name__


def load_embeddings(path: str) -> Embeddings:
  """Reads an exported `.npz`; raises InputError naming the file and the problem."""
  if not os.path.exists(path):
    raise errors.InputError(f"{path}: no such file")
  if os.path.isdir(path):
    raise errors.InputError(f"{path}: is a directory, expected an .npz file")
  try:
    npz = np.load(path, allow_pickle=False)
  except ValueError:  # Neither zip nor .npy: numpy would try pickle next.
    raise errors.InputError(f"{path}: not an .npz archive")
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise errors.InputError(f"{path}: not an .npz archive ({one_line(e)})")
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise errors.InputError(f"{path}: not an .npz archive (a single .npy array)")
  arrays = {}
  with npz:
    missing = [name for name in ARRAYS if name not in npz.files]
    if missing:
      raise errors.InputError(f"{path}: missing array(s) {', '.join(missing)}")
    for name in ARRAYS:
      try:
        arrays[name] = npz[name]
      except ValueError as e:
        if "allow_pickle" in str(e):
          raise errors.InputError(
              f"{path}: array {name} holds pickled Python objects; save plain "
              "numpy arrays (ids as unicode strings, not dtype=object)")
        raise errors.InputError(f"{path}: array {name}: {one_line(e)}")
      except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise errors.InputError(f"{path}: array {name} is unreadable ({one_line(e)})")
  return _checked(path, **arrays)


def _checked(path, user_ids, user_emb, item_ids, item_emb, visited_indptr,
             visited_indices) -> Embeddings:
  """Validates shapes, dtypes, CSR structure and values; converts dtypes."""
  def fail(message):
    raise errors.InputError(f"{path}: {message}")

  for name, ids, bad_chars in (("user_ids", user_ids, "\t\n\r"),
                               ("item_ids", item_ids, "\t\n\r,")):
    if ids.ndim != 1 or ids.dtype.kind != "U":
      fail(f"{name} must be a 1-D array of unicode strings, got {ids.dtype} "
           f"with shape {ids.shape}")
    for char in bad_chars:
      if (np.char.find(ids, char) >= 0).any():
        fail(f"{name} contains {char!r}, which the output format cannot hold")
    if len(np.unique(ids)) != len(ids):
      fail(f"{name} has duplicates")
  embs = {}
  for name, emb, ids_name, ids in (("user_emb", user_emb, "user_ids", user_ids),
                                   ("item_emb", item_emb, "item_ids", item_ids)):
    if emb.ndim != 2 or emb.dtype.kind != "f":
      fail(f"{name} must be a 2-D float array, got {emb.dtype} with shape {emb.shape}")
    if emb.shape[0] != len(ids):
      fail(f"{name} has {emb.shape[0]} rows but {ids_name} has {len(ids)} ids")
    if emb.shape[1] == 0:
      fail(f"{name} has embedding size 0")
    emb = np.ascontiguousarray(emb, np.float32)
    if emb.size and not (np.isfinite(emb.min()) and np.isfinite(emb.max())):
      row = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
      fail(f"{name} has non-finite values (first in row {row})")
    embs[name] = emb
  if user_emb.shape[1] != item_emb.shape[1]:
    fail(f"user_emb has size {user_emb.shape[1]} but item_emb has size "
         f"{item_emb.shape[1]}")
  for name, a in (("visited_indptr", visited_indptr),
                  ("visited_indices", visited_indices)):
    if a.ndim != 1 or a.dtype.kind not in "iu":
      fail(f"{name} must be a 1-D integer array, got {a.dtype} with shape {a.shape}")
  indptr = visited_indptr.astype(np.int64)
  indices = visited_indices.astype(np.int64)
  if len(indptr) != len(user_ids) + 1:
    fail(f"visited_indptr has length {len(indptr)}, expected {len(user_ids) + 1} "
         "(users + 1)")
  if indptr[0] != 0 or (np.diff(indptr) < 0).any():
    fail("visited_indptr must start at 0 and never decrease")
  if indptr[-1] != len(indices):
    fail(f"visited_indptr ends at {indptr[-1]} but visited_indices has "
         f"{len(indices)} entries")
  if len(indices) and (indices.min() < 0 or indices.max() >= len(item_ids)):
    fail(f"visited_indices out of range [0, {len(item_ids)})")
  return Embeddings(user_ids, embs["user_emb"], item_ids, embs["item_emb"],
                    indptr, indices)
