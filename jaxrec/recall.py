"""Recall: every user's top-n unvisited items by inner product, with faiss.

Standalone on purpose: it reads the arrays that export writes and never imports
JAX or the model.

  python -m jaxrec.recall --embeddings=emb.npz --top_n=50 --output=recall.tsv

Output: one line per user, `user<TAB>item1,item2,...` (raw ids, best first), or
`item:score` pairs with --with_scores. With --num_shards=n --shard_index=s a run
handles the contiguous users [s*U//n, (s+1)*U//n), so concatenating the shard
outputs in shard order gives exactly the unsharded output.

Shapes: U users, I items, D embedding size, B users in a search batch, K
candidates per user, N = top_n.
"""

import contextlib
import dataclasses
import itertools
import math
import os
import time
import zipfile

from absl import app
from absl import flags
import faiss
import numpy as np

from jaxrec import console
from jaxrec import errors
from jaxrec import fileio

PROG = "jaxrec.recall"
ARRAYS = ("user_ids", "user_emb", "item_ids", "item_emb", "visited_indptr",
          "visited_indices")
# Extra candidates per search, so that the rounding check below rarely fails.
MARGIN = 16

# Exactness. The design note searches one user at a time and flat mode must
# return its lists exactly. faiss scores one query with its SIMD dot product
# (`fvec_inner_product`) but a large batch with BLAS sgemm. The two round
# differently (up to ~2e-5 on random normal data, D=64), which reorders near-tied
# items: a plain batched search changed about 1 list in 1,000 there (and every
# list when items come in near-duplicate groups). faiss 1.15 also scores a single
# query with sgemm when it splits >= 10k items over several threads. So:
#   1. `_single_query_scoring` asks faiss which of the two a one-user search uses
#      here (rather than copying faiss's internal rule).
#   2. Candidates come from a batched search, K = top_n + visits + MARGIN.
#   3. They are rescored with that arithmetic (SIMD: `fvec_inner_products_by_idx`;
#      sgemm: the batched search itself, kept on its BLAS path) and ordered as
#      faiss orders its results: score descending, then item index descending.
#   4. A user's list is final only if its last item beats every non-candidate by
#      more than the rounding error: two float32 evaluations of u.v, in any
#      summation order, differ by at most about 2*D*2^-24*sum_k|u_k v_k|; we allow
#      (D+2)*2^-23*|u|*max|v| (`_error_factor`). Otherwise the user is searched
#      again with a larger K (all items at worst).
#   5. Where a one-user search matches neither (faiss 1.15 splits >= 10k items over
#      its threads and scores each block with a one-row sgemm, which on an AVX-512
#      AMD EPYC rounds unlike a batched one), lists come from sgemm MARGIN items
#      longer, and each user with two of the first top_n + 1 items whose scores
#      could swap (gap <= the sum of the two items' own bounds,
#      (D+2)*2^-23*sum_k|u_k v_k|) has them rescored with a one-query sgemm over just
#      the listed items ("row": that score depends on the item alone, which
#      `_single_query_scoring` checks). If an unlisted item could still enter the
#      first top_n, or no such rescoring matches ("single"), the user is searched
#      alone, as the note does.
# Only a tie group that reaches the note's own k-th result (>= 23*top_n items
# with one score) can still differ: there faiss keeps an arbitrary subset.


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


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  """Which faiss index to search; `flat` is exact, `ivf` and `hnsw` approximate."""
  kind: str = "flat"
  ivf_nlist: int | None = None  # None: about 4*sqrt(I), at most I/39.
  ivf_nprobe: int = 32
  hnsw_m: int = 32
  hnsw_ef_search: int = 256
  hnsw_ef_construction: int = 40


def _one_line(e: BaseException) -> str:
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
    raise errors.InputError(f"{path}: not an .npz archive ({_one_line(e)})")
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
        raise errors.InputError(f"{path}: array {name}: {_one_line(e)}")
      except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise errors.InputError(f"{path}: array {name} is unreadable ({_one_line(e)})")
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


def build_index(item_emb: np.ndarray, config: IndexConfig) -> faiss.Index:
  """An inner-product faiss index over the item vectors [I, D]."""
  num_items, dim = item_emb.shape
  if config.kind == "flat":
    index = faiss.IndexFlatIP(dim)
  elif config.kind == "ivf":
    nlist = config.ivf_nlist or default_ivf_nlist(num_items)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist,
                               faiss.METRIC_INNER_PRODUCT)
    index.train(item_emb)
    index.nprobe = min(config.ivf_nprobe, nlist)
  elif config.kind == "hnsw":
    index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = config.hnsw_ef_search
  else:
    raise errors.InputError(f"unknown index kind {config.kind!r} (flat, ivf, hnsw)")
  index.add(item_emb)
  return index


def default_ivf_nlist(num_items: int) -> int:
  """About 4*sqrt(I) lists, but at least 39 items per list for k-means."""
  return max(1, min(round(4 * math.sqrt(num_items)), num_items // 39))


@contextlib.contextmanager
def _blas_search(enabled: bool = True):
  """Keeps IndexFlat on sgemm even for small batches (it uses SIMD loops below
  distance_compute_blas_threshold). Process-global while active."""
  old = faiss.cvar.distance_compute_blas_threshold
  if enabled:
    faiss.cvar.distance_compute_blas_threshold = 0
  try:
    with _reservoir_top_k():
      yield
  finally:
    faiss.cvar.distance_compute_blas_threshold = old


@contextlib.contextmanager
def _reservoir_top_k(from_k: int = 32):
  """Keeps the top k with faiss's reservoir rather than a heap from `from_k` on (faiss's
  default is 100): about 25% faster at our k of 60-100, with the same lists."""
  old = faiss.cvar.distance_compute_min_k_reservoir
  faiss.cvar.distance_compute_min_k_reservoir = min(old, from_k)
  try:
    yield
  finally:
    faiss.cvar.distance_compute_min_k_reservoir = old


def _simd_scores(user_BxD, item_emb, ids_BxK) -> np.ndarray:
  """u.v for the given pairs with faiss's one-query SIMD dot product; -inf for id -1."""
  user_BxD = np.ascontiguousarray(user_BxD, np.float32)
  ids_BxK = np.ascontiguousarray(ids_BxK, np.int64)
  scores_BxK = np.empty(ids_BxK.shape, np.float32)
  faiss.fvec_inner_products_by_idx(
      faiss.swig_ptr(scores_BxK), faiss.swig_ptr(user_BxD),
      faiss.swig_ptr(item_emb), faiss.swig_ptr(ids_BxK), item_emb.shape[1],
      ids_BxK.shape[0], ids_BxK.shape[1])
  return scores_BxK


def _error_factor(dim: int) -> float:
  """Two float32 evaluations of u.v, summed in any order, differ by at most
  2 * gamma_D * sum_k |u_k v_k| (gamma_D = D u / (1 - D u), u = 2^-24); this factor,
  times sum_k |u_k v_k| (or the larger |u| |v|), bounds that with room to spare."""
  return (dim + 2) * float(np.finfo(np.float32).eps)


def _pair_error(user_BxD, item_emb, ids_BxM) -> np.ndarray:
  """The bound of `_error_factor` for each listed (user, item) pair: [B, M] float64
  (0 where the id is -1)."""
  user_BxD = np.abs(user_BxD, dtype=np.float64)
  sums_BxM = np.empty(ids_BxM.shape)
  for m in range(ids_BxM.shape[1]):  # a column at a time: no [B, M, D] copy
    items_BxD = np.abs(item_emb[np.maximum(ids_BxM[:, m], 0)], dtype=np.float64)
    sums_BxM[:, m] = np.einsum("bd,bd->b", items_BxD, user_BxD)
  return np.where(ids_BxM >= 0, _error_factor(item_emb.shape[1]) * sums_BxM, 0.0)


def _row_scores(user_D, item_emb, ids) -> np.ndarray:
  """u.v for the given items (no -1), each as a one-query sgemm scores it (step 5)."""
  index = faiss.IndexFlatIP(item_emb.shape[1])
  index.add(item_emb[ids])
  with _blas_search():
    scores_1xK, pos_1xK = index.search(user_D[None], len(ids))
  scores = np.empty(len(ids), np.float32)
  scores[pos_1xK[0]] = scores_1xK[0]
  return scores


def _single_query_scoring(index: faiss.Index, item_emb: np.ndarray) -> str:
  """How a one-query `index.search` scores here: "simd" or "blas" (step 1 above),
  "row" (a one-query sgemm, step 5) or "single" where it matches none of them.

  Uses the current faiss thread count, as the one-user search it must match does.
  """
  k = min(16, len(item_emb))
  queries = np.random.default_rng(0).standard_normal(
      (4, item_emb.shape[1]), dtype=np.float32)
  singles = [index.search(q[None], k) for q in queries]
  scores = np.concatenate([s for s, _ in singles])
  ids = np.concatenate([i for _, i in singles])
  if np.array_equal(scores, _simd_scores(queries, item_emb, ids)):
    return "simd"
  with _blas_search():
    blas_scores, blas_ids = index.search(queries, k)
  if np.array_equal(scores, blas_scores) and np.array_equal(ids, blas_ids):
    return "blas"
  if all(np.array_equal(s, _row_scores(q, item_emb, i)) for q, s, i in zip(queries, scores, ids)):
    return "row"
  console.info("%s: cannot tell how faiss %s scores one query here; users whose "
               "lists hold near-tied items are searched one at a time", PROG, faiss.__version__)
  return "single"


def _first_unvisited(ids_BxK, scores_BxK, visited_BxK, top_n):
  """The first top_n unvisited candidates, ordered by score desc then id desc.

  Returns (ids [B, N] with -1 fill, scores [B, N] with -inf fill, counts [B]).
  """
  # faiss returns rows by score already; only rows with ties need the id order fixed.
  later_ties = scores_BxK[:, 1:] == scores_BxK[:, :-1]
  misordered = ((scores_BxK[:, 1:] > scores_BxK[:, :-1]) | (later_ties & (ids_BxK[:, 1:] > ids_BxK[:, :-1])))
  fix = np.flatnonzero(misordered.any(axis=1))
  if fix.size:
    ids_BxK, scores_BxK, visited_BxK = ids_BxK.copy(), scores_BxK.copy(), visited_BxK.copy()
    order = np.lexsort((-ids_BxK[fix], -scores_BxK[fix]), axis=-1)
    for a in (ids_BxK, scores_BxK, visited_BxK):
      a[fix] = np.take_along_axis(a[fix], order, axis=1)
  keep_BxK = (ids_BxK >= 0) & ~visited_BxK
  keep_BxK &= np.cumsum(keep_BxK, axis=1) <= top_n
  counts_B = keep_BxK.sum(axis=1)
  # Kept columns first, in their order (a stable sort of the "dropped" flags).
  cols_BxN = np.argsort(~keep_BxK, axis=1, kind="stable")[:, :top_n]
  filled_BxN = np.arange(top_n) < counts_B[:, None]
  ids_BxN = np.where(filled_BxN, np.take_along_axis(ids_BxK, cols_BxN, 1), -1)
  scores_BxN = np.where(filled_BxN, np.take_along_axis(scores_BxK, cols_BxN, 1),
                        np.float32(-np.inf))
  return ids_BxN, scores_BxN, counts_B


def _is_in(keys, sorted_keys):
  """np.isin for a sorted, duplicate-free `sorted_keys` (no re-sorting)."""
  if not sorted_keys.size:
    return np.zeros(keys.shape, bool)
  pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
  return sorted_keys[pos] == keys


def _one_user(index, user_D, visited, top_n, num_items):
  """The design note's own search for one user: (items [N], scores [N])."""
  k = min(num_items, top_n + len(visited) + MARGIN)
  while True:
    scores_1xK, ids_1xK = index.search(user_D[None], k)
    ids, scores, counts = _first_unvisited(ids_1xK, scores_1xK, np.isin(ids_1xK, visited), top_n)
    if k == num_items or (counts[0] == top_n and scores[0, -1] > scores_1xK.min()):
      return ids[0], scores[0]
    k = min(num_items, 2 * k)


def _rescored(user_D, item_emb, ids_M, scores_M, error, top_n):
  """A user's sgemm list reordered by one-query sgemm scores: (items [N], scores [N]),
  or None where an item outside the list could still enter its first top_n."""
  listed = ids_M[ids_M >= 0]
  row = _row_scores(user_D, item_emb, listed)
  order = np.lexsort((-listed, -row))  # as faiss orders: score desc, then id desc
  listed, row = listed[order], row[order]
  # Every unvisited item listed, or the top_n-th beats any item after the list.
  if not (len(listed) < len(ids_M) or len(ids_M) == len(item_emb)
          or row[top_n - 1] > scores_M[-1] + error):
    return None
  ids_N = np.full(top_n, -1, np.int64)
  scores_N = np.full(top_n, -np.inf, np.float32)
  ids_N[:min(top_n, len(listed))] = listed[:top_n]
  scores_N[:min(top_n, len(listed))] = row[:top_n]
  return ids_N, scores_N


def _recall_batch(index, scoring, item_emb, user_BxD, error_B, indptr, indices,
                  top_n):
  """Top-n unvisited items for one batch of users; see "Exactness" above.

  `scoring` is "simd", "blas" or "row" for the exact index, "single" for an exact
  index whose one-query arithmetic is unknown, "index" for an approximate one (its own
  scores, one retry with a larger K). `indptr` [B+1] and `indices` are the
  batch's visits. Returns (items [B, N], scores [B, N], rows left short).
  """
  num_users, num_items = len(user_BxD), len(item_emb)
  if scoring in ("row", "single"):
    # Lists from sgemm, a little longer; a user with two of the first top_n + 1 items
    # whose scores could swap is rescored (step 5).
    num_listed = min(top_n + (MARGIN if scoring == "row" else 1), num_items)
    ids_BxM, scores_BxM, _ = _recall_batch(index, "blas", item_emb, user_BxD, error_B, indptr,
                                           indices, num_listed)
    # Each item's own bound; the (top_n + 1)-th stands for every item after it.
    n1 = min(top_n + 1, num_listed)
    item_error_BxN1 = _pair_error(user_BxD, item_emb, ids_BxM[:, :n1])
    item_error_BxN1[:, -1] = error_B
    gaps_BxN = scores_BxM[:, :n1 - 1] - scores_BxM[:, 1:n1]
    close_BxN = gaps_BxN <= item_error_BxN1[:, :-1] + item_error_BxN1[:, 1:]
    close_B = (close_BxN & np.isfinite(scores_BxM[:, 1:n1])).any(axis=1)
    ids_BxN, scores_BxN = ids_BxM[:, :top_n].copy(), scores_BxM[:, :top_n].copy()
    for b in np.flatnonzero(close_B):
      found = (_rescored(user_BxD[b], item_emb, ids_BxM[b], scores_BxM[b], error_B[b], top_n)
               if scoring == "row" else None)
      ids_BxN[b], scores_BxN[b] = found or _one_user(
          index, user_BxD[b], indices[indptr[b]:indptr[b + 1]], top_n, num_items)
    return ids_BxN, scores_BxN, np.zeros(0, np.int64)
  exact = scoring != "index"
  visits_B = np.diff(indptr)
  visited_keys = np.unique(np.repeat(np.arange(num_users), visits_B) * num_items
                           + indices)
  unvisited_B = num_items - np.bincount(visited_keys // num_items,
                                        minlength=num_users)
  ids_BxN = np.full((num_users, top_n), -1, np.int64)
  scores_BxN = np.full((num_users, top_n), -np.inf, np.float32)
  pending = np.arange(num_users)
  # Enough candidates for top_n after filtering, barring ties at the boundary.
  # The 1% heaviest visitors get a second search rather than a huge K for all.
  need_B = top_n + visits_B + MARGIN
  k = min(num_items, int(np.ceil(np.quantile(need_B, 0.99))))
  for search in itertools.count():
    with _blas_search(scoring == "blas"):
      fast_BxK, cand_BxK = index.search(user_BxD[pending], k)
    ref_BxK = (_simd_scores(user_BxD[pending], item_emb, cand_BxK)
               if scoring == "simd" else fast_BxK)
    keys_BxK = np.where(cand_BxK >= 0, pending[:, None] * num_items + cand_BxK, -1)
    ids, scores, counts = _first_unvisited(
        cand_BxK, ref_BxK, _is_in(keys_BxK, visited_keys), top_n)
    if exact and k == num_items:  # Every item was scored.
      done = np.ones(len(pending), bool)
    elif exact:
      last = scores[np.arange(len(pending)), np.maximum(counts - 1, 0)]
      done = (counts == top_n) & (last > fast_BxK.min(axis=1) + error_B[pending])
    else:
      done = counts == np.minimum(top_n, unvisited_B[pending])
    ids_BxN[pending[done]] = ids[done]
    scores_BxN[pending[done]] = scores[done]
    pending = pending[~done]
    if not pending.size or (not exact and (search == 1 or k == num_items)):
      break
    k = min(num_items, max(2 * k, int(need_B[pending].max())))
  return ids_BxN, scores_BxN, pending


def _csr_rows(indptr, indices, rows):
  """The CSR (indptr, indices) of the given rows only."""
  counts = np.diff(indptr)[rows]
  picked = [indices[indptr[r]:indptr[r + 1]] for r in rows]
  return (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
          np.concatenate(picked + [np.zeros(0, np.int64)]))


def recall_top_n(user_emb: np.ndarray, item_emb: np.ndarray,
                 visited_indptr: np.ndarray, visited_indices: np.ndarray,
                 top_n: int, *, index: str | IndexConfig | faiss.Index = "flat",
                 batch_size: int = 4096, log_every_s: float = 30.0):
  """Each user's top_n items by u.v, skipping the items the user visited.

  Args:
    user_emb: [U, D] float32.
    item_emb: [I, D] float32.
    visited_indptr: [U + 1] CSR row pointers into visited_indices.
    visited_indices: [nnz] indices into the item rows (repeats allowed).
    top_n: items per user, 1 <= top_n <= I.
    index: "flat" (exact: the design note's one-user lists), "ivf", "hnsw", an
      IndexConfig, or a faiss index already holding item_emb (an IndexFlatIP is
      searched exactly). Users an approximate index leaves short are searched
      exactly.
    batch_size: users per faiss search.
    log_every_s: seconds between progress lines on stderr.

  Returns:
    (items [U, N] int64, scores [U, N] float32), best first; -1 and -inf fill
    where fewer than top_n unvisited items exist.
  """
  user_emb = np.ascontiguousarray(user_emb, np.float32)
  item_emb = np.ascontiguousarray(item_emb, np.float32)
  visited_indptr = np.asarray(visited_indptr, np.int64)
  visited_indices = np.asarray(visited_indices, np.int64)
  num_users, num_items = len(user_emb), len(item_emb)
  if not 1 <= top_n <= num_items:
    raise errors.InputError(f"top_n={top_n} must be in [1, {num_items}] (the items)")
  if batch_size < 1:
    raise errors.InputError(f"batch_size={batch_size} must be positive")
  start = time.perf_counter()
  if isinstance(index, faiss.Index):
    if (index.ntotal, index.d) != item_emb.shape:
      raise errors.InputError(f"the faiss index holds {index.ntotal} x {index.d} "
                              f"vectors, item_emb is {num_items} x {item_emb.shape[1]}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
      raise errors.InputError("the faiss index must use METRIC_INNER_PRODUCT")
    faiss_index = index
  else:
    config = IndexConfig(kind=index) if isinstance(index, str) else index
    faiss_index = build_index(item_emb, config)
    if config.kind != "flat":
      console.info("%s: built %s index over %d items in %.1f s", PROG, config.kind,
                   num_items, time.perf_counter() - start)
  exact = isinstance(faiss_index, faiss.IndexFlatIP)
  scoring = _single_query_scoring(faiss_index, item_emb) if exact else "index"
  # Bound on |batched score - one-query score| per user (step 4 above).
  max_item_norm = np.sqrt((item_emb.astype(np.float64) ** 2).sum(1).max())
  user_norm_U = np.sqrt((user_emb.astype(np.float64) ** 2).sum(1))
  error_U = _error_factor(item_emb.shape[1]) * user_norm_U * max_item_norm
  if error_U.max(initial=0) > 1e30:
    raise errors.InputError("embeddings too large: inner products overflow float32")
  items_UxN = np.full((num_users, top_n), -1, np.int64)
  scores_UxN = np.full((num_users, top_n), -np.inf, np.float32)
  exact_index = None
  last_log = start
  for lo in range(0, num_users, batch_size):
    hi = min(num_users, lo + batch_size)
    users_BxD, error_B = user_emb[lo:hi], error_U[lo:hi]
    indptr = visited_indptr[lo:hi + 1] - visited_indptr[lo]
    indices = visited_indices[visited_indptr[lo]:visited_indptr[hi]]
    items, scores, short = _recall_batch(faiss_index, scoring, item_emb, users_BxD,
                                         error_B, indptr, indices, top_n)
    if short.size:  # The approximate index ran dry for these users.
      if exact_index is None:
        exact_index = build_index(item_emb, IndexConfig())
        exact_scoring = _single_query_scoring(exact_index, item_emb)
      items[short], scores[short], _ = _recall_batch(
          exact_index, exact_scoring, item_emb, users_BxD[short], error_B[short],
          *_csr_rows(indptr, indices, short), top_n)
    items_UxN[lo:hi], scores_UxN[lo:hi] = items, scores
    now = time.perf_counter()
    if now - last_log >= log_every_s and hi < num_users:
      console.info("%s: %d/%d users, %.0f users/s", PROG, hi, num_users,
                   hi / (now - start))
      last_log = now
  elapsed = time.perf_counter() - start
  console.info("%s: %d users x %d items in %.1f s (%.0f users/s, %s search)", PROG,
               num_users, num_items, elapsed, num_users / max(elapsed, 1e-9),
               f"exact {scoring}" if exact else type(faiss_index).__name__)
  return items_UxN, scores_UxN


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
    raise errors.InputError(f"cannot write {path}: {e.strerror or _one_line(e)}")


FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when this module is the program, so importing it adds no flags."""
  flags.DEFINE_string("embeddings", None, "Exported .npz with user/item vectors and visits.")
  flags.DEFINE_integer("top_n", 50, "Items per user.")
  flags.DEFINE_string("output", None, "TSV to write: user<TAB>item1,item2,...")
  flags.DEFINE_enum("index", "flat", ["flat", "ivf", "hnsw"],
                    "flat: exact IndexFlatIP; ivf, hnsw: approximate.")
  flags.DEFINE_integer("ivf_nlist", None, "IVF lists; default about 4*sqrt(items).")
  flags.DEFINE_integer("ivf_nprobe", IndexConfig.ivf_nprobe, "IVF lists searched per user.")
  flags.DEFINE_integer("hnsw_m", IndexConfig.hnsw_m, "HNSW neighbours per node.")
  flags.DEFINE_integer("hnsw_ef_search", IndexConfig.hnsw_ef_search, "HNSW search breadth.")
  flags.DEFINE_integer("hnsw_ef_construction", IndexConfig.hnsw_ef_construction,
                       "HNSW build breadth.")
  flags.DEFINE_integer("batch_size", 4096, "Users per faiss search.")
  flags.DEFINE_bool("with_scores", False, "Write item:score instead of item.")
  flags.DEFINE_integer("num_shards", 1, "Split the users into this many contiguous shards.")
  flags.DEFINE_integer("shard_index", 0, "Which shard this run handles, 0-based.")
  flags.DEFINE_integer("num_threads", None, "faiss OpenMP threads; default faiss's.")


def _check_flags():
  positive = ["top_n", "batch_size", "num_shards", "ivf_nprobe", "hnsw_m",
              "hnsw_ef_search", "hnsw_ef_construction"]
  for name in positive + ["ivf_nlist", "num_threads"]:
    value = FLAGS[name].value
    if value is not None and value < 1:
      raise errors.InputError(f"--{name}={value} must be positive")
  if not 0 <= FLAGS.shard_index < FLAGS.num_shards:
    raise errors.InputError(f"--shard_index={FLAGS.shard_index} must be in "
                            f"[0, --num_shards={FLAGS.num_shards})")
  for name in ("embeddings", "output"):
    if not FLAGS[name].value:
      raise errors.InputError(f"--{name} is required")
  out_dir = os.path.dirname(os.path.abspath(FLAGS.output))
  if not os.path.isdir(out_dir):
    raise errors.InputError(f"--output={FLAGS.output}: directory {out_dir} does not exist")
  if os.path.isdir(FLAGS.output):
    raise errors.InputError(f"--output={FLAGS.output}: is a directory")
  if os.path.exists(FLAGS.output) and os.path.samefile(FLAGS.output, FLAGS.embeddings):
    raise errors.InputError(f"--output={FLAGS.output}: is the --embeddings file; refusing to overwrite it")


def main(argv):
  with errors.exit_on_input_error(PROG):
    if len(argv) > 1:
      raise errors.InputError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need --)")
    _check_flags()
    if FLAGS.num_threads:
      faiss.omp_set_num_threads(FLAGS.num_threads)
    emb = load_embeddings(FLAGS.embeddings)
    num_items = len(emb.item_ids)
    if FLAGS.top_n > num_items:
      raise errors.InputError(f"--top_n={FLAGS.top_n} is larger than the catalog of "
                              f"{FLAGS.embeddings} ({num_items} items)")
    if FLAGS.ivf_nlist is not None and FLAGS.ivf_nlist > num_items:
      raise errors.InputError(f"--ivf_nlist={FLAGS.ivf_nlist} is larger than the "
                              f"catalog of {FLAGS.embeddings} ({num_items} items)")
    emb = emb.shard(FLAGS.num_shards, FLAGS.shard_index)
    config = IndexConfig(FLAGS.index, FLAGS.ivf_nlist, FLAGS.ivf_nprobe, FLAGS.hnsw_m,
                         FLAGS.hnsw_ef_search, FLAGS.hnsw_ef_construction)
    items_UxN, scores_UxN = recall_top_n(
        emb.user_emb, emb.item_emb, emb.visited_indptr, emb.visited_indices,
        FLAGS.top_n, index=config, batch_size=FLAGS.batch_size)
    write_recall(FLAGS.output, emb.user_ids, emb.item_ids, items_UxN,
                 scores_UxN if FLAGS.with_scores else None)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=errors.flags_parser(PROG))
