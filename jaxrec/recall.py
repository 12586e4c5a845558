"""Recall: every user's top-n unvisited items by inner product, with faiss.

Standalone on purpose: it reads the arrays that export writes and never imports
JAX or the model.

The command line (`python -m jaxrec.recall`) is recall_cli. Sharded runs: concatenating
the shard outputs in shard order gives the unsharded output, as the listed scores are
recomputed per (user, item) pair in one fixed order (`_rescored`), as faiss's
sgemm rounds a pair differently with the shape of the batch it is in.

Exactness (flat index; the users an approximate index leaves short after a
second, larger search are searched exactly). A list holds the top-N unvisited
items by inner product, best first, where items whose scores are within float32
rounding of each other may come in either order: with float64 scores s and
tol_u = (D + 2) * 2^-23 * max_j sum_k |u_k v_jk|, it has min(N, unvisited)
distinct unvisited items, s[i+1] <= s[i] + tol_u, its last s is >= any unlisted
unvisited s - tol_u, and each float32 score is within tol_u of its s. Ranking by
any float32 evaluation of u.v meets this (each is within about
D * 2^-24 * sum_k |u_k v_jk| of s). The same input on the same machine gives the
same output: exact float32 ties go by item index ascending, faiss keeps each
query's top k on one thread, and the listed scores do not depend on the batch.

Shapes: U users, I items, D embedding size, B users in a search batch, K
candidates per user, N = top_n.
"""

import contextlib
import hashlib
import json
import functools
import itertools
import math
import os
import time

import faiss
import numpy as np

from jaxrec import console
from jaxrec import embeddings
from jaxrec import errors
from jaxrec import fileio
from jaxrec import recall_lists
from jaxrec.config import IndexConfig, RecallConfig
from jaxrec.errors import InputError

PROG = "jaxrec.recall"
CHUNK_USERS = 262_144  # users recalled and written at a time by recall_to_file
ARRAYS = embeddings.ARRAYS
Embeddings = embeddings.Embeddings
load_embeddings = embeddings.load_embeddings


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


def item_fingerprint(item_ids: np.ndarray, item_emb: np.ndarray) -> str:
  """sha256 of the item ids and vectors an index is built over."""
  digest = hashlib.sha256("\n".join(item_ids.tolist()).encode())
  digest.update(np.ascontiguousarray(item_emb, np.float32).tobytes())
  return digest.hexdigest()


def save_index(index: faiss.Index, path: str, fingerprint: str) -> None:
  """Writes the index to `path` and its catalog's fingerprint to `path`.json, atomically."""
  try:
    with fileio.atomic_path(path) as tmp:
      faiss.write_index(index, tmp)
    with fileio.atomic_open(path + ".json") as f:
      json.dump({"fingerprint": fingerprint, "vectors": index.ntotal, "dim": index.d,
                 "index": type(index).__name__}, f)
  except (OSError, RuntimeError) as e:
    raise errors.WriteError(f"{errors.cause(e)} writing the index {path}; nothing was written there") from None


def load_index(path: str, fingerprint: str) -> faiss.Index:
  """The index `save_index` wrote, refused unless built over the same items and vectors."""
  try:
    with open(path + ".json") as f:
      meta = json.load(f)
    index = faiss.read_index(path)
  except (OSError, ValueError, RuntimeError) as e:
    raise errors.InputError(f"--load_index={path}: cannot read a saved index: {embeddings.one_line(e)}") from None
  if meta.get("fingerprint") != fingerprint:
    raise errors.InputError(f"--load_index={path}: built over other item ids or vectors than --embeddings")
  return index


def default_ivf_nlist(num_items: int) -> int:
  """About 4*sqrt(I) lists, but at least 39 items per list for k-means."""
  return max(1, min(round(4 * math.sqrt(num_items)), num_items // 39))


# IndexFlat's batched search, tuned: sgemm for any batch size (below the BLAS
# threshold faiss scores queries one by one with SIMD loops, which round
# otherwise: a retry would score a pair unlike the first search); the top k kept
# in a reservoir rather than a heap from k = 32 on (faiss's default is 100),
# faster at our k; score blocks of 1024 queries x 2048 items.
_FLAT_SEARCH = {"distance_compute_blas_threshold": 0,
                "distance_compute_min_k_reservoir": 32,
                "distance_compute_blas_query_bs": 1024,
                "distance_compute_blas_database_bs": 2048}


@contextlib.contextmanager
def _flat_search_settings():
  """Sets _FLAT_SEARCH (process-global) while active."""
  old = {name: getattr(faiss.cvar, name) for name in _FLAT_SEARCH}
  try:
    for name, value in _FLAT_SEARCH.items():
      setattr(faiss.cvar, name, value)
    yield
  finally:
    for name, value in old.items():
      setattr(faiss.cvar, name, value)


def _by_score_then_id(scores_BxK, ids_BxK):
  """Rows by score descending, then item index ascending, id -1 (none) last.

  faiss leaves exact ties in no set order; only rows out of order are sorted.
  """
  key_s = np.where(ids_BxK >= 0, scores_BxK, -np.inf)
  key_i = np.where(ids_BxK >= 0, ids_BxK, np.iinfo(np.int64).max)
  ties = key_s[:, 1:] == key_s[:, :-1]
  wrong = (key_s[:, 1:] > key_s[:, :-1]) | (ties & (key_i[:, 1:] < key_i[:, :-1]))
  fix = np.flatnonzero(wrong.any(axis=1))
  if fix.size:
    order = np.lexsort((key_i[fix], -key_s[fix]), axis=-1)
    scores_BxK, ids_BxK = scores_BxK.copy(), ids_BxK.copy()
    scores_BxK[fix] = np.take_along_axis(scores_BxK[fix], order, axis=1)
    ids_BxK[fix] = np.take_along_axis(ids_BxK[fix], order, axis=1)
  return scores_BxK, ids_BxK


def _is_in(keys, sorted_keys):
  """np.isin for keys >= -1 and a sorted, duplicate-free `sorted_keys`; a table
  of their low 20 bits (no false negatives) spares most keys the binary search."""
  table = np.zeros(1 << 20, bool)
  table[sorted_keys & 0xFFFFF] = True
  flat = keys.ravel()
  maybe = np.flatnonzero(table[flat & 0xFFFFF])
  found = np.zeros(flat.shape, bool)
  pos = np.searchsorted(sorted_keys, flat[maybe])
  found[maybe] = np.take(sorted_keys, pos, mode="clip") == flat[maybe]
  return found.reshape(keys.shape)


def _rescored(user_BxD, item_IxD, items_BxN, scores_BxN):
  """The lists re-scored in float32 per (user, item) pair, each a product then numpy's
  pairwise sum over D, so a pair scores alike in any batch, shard or server call, and
  re-sorted by those scores (then item index). Only items within float32 rounding of
  each other can change places."""
  out = np.empty_like(scores_BxN)
  rows = max(1, (1 << 22) // max(1, items_BxN.shape[1] * item_IxD.shape[1]))  # ~16 MiB of products
  for lo in range(0, len(items_BxN), rows):
    items = items_BxN[lo:lo + rows]
    products_BxNxD = user_BxD[lo:lo + rows, None, :] * item_IxD[np.maximum(items, 0)]
    out[lo:lo + rows] = np.where(items >= 0, products_BxNxD.sum(axis=-1), -np.inf)
  scores, items = _by_score_then_id(out, items_BxN)
  return items, scores


def _recall_batch(index, exact_index, user_BxD, indptr, indices, top_n, item_IxD):
  """Top-n unvisited items for one batch of users: (items [B, N], scores [B, N]).

  `indptr` [B+1] and `indices` are the batch's visits. Users left short are
  searched again with a larger K: an exact index until all are complete, an
  approximate one once, then `exact_index()` (None for an exact `index`).
  """
  num_users, num_items = len(user_BxD), index.ntotal
  keys = np.sort(np.repeat(np.arange(num_users) * num_items, np.diff(indptr)) + indices)
  visited_keys = keys[np.diff(keys, prepend=-1) != 0]  # user * I + item, no repeats
  visits_B = np.bincount(visited_keys // num_items, minlength=num_users)
  wanted_B = np.minimum(top_n, num_items - visits_B)
  # A user is complete when its unvisited candidates reach `wanted`, which
  # K >= top_n + visits ensures whatever the user visited. K is sized for 99% of
  # the batch so that heavy visitors do not inflate it for all; they search again.
  need_B = top_n + visits_B
  k = min(num_items, int(np.ceil(np.quantile(need_B, 0.99))))
  items_BxN = np.full((num_users, top_n), -1, np.int64)
  scores_BxN = np.full((num_users, top_n), -np.inf, np.float32)
  pending = np.arange(num_users)
  for search in itertools.count():
    scores_BxK, ids_BxK = _by_score_then_id(*index.search(user_BxD[pending], k))
    keys_BxK = pending[:, None] * num_items + ids_BxK
    keep_BxK = (ids_BxK >= 0) & ~_is_in(keys_BxK, visited_keys)
    counts_B = keep_BxK.sum(axis=1)
    done_B = counts_B >= wanted_B[pending]
    # Kept columns first, in their order (a stable sort of the "dropped" flags).
    cols_BxN = np.argsort(~keep_BxK[done_B], axis=1, kind="stable")[:, :top_n]
    filled_BxN = np.arange(top_n) < counts_B[done_B, None]
    items_BxN[pending[done_B]] = np.where(
        filled_BxN, np.take_along_axis(ids_BxK[done_B], cols_BxN, axis=1), -1)
    scores_BxN[pending[done_B]] = np.where(
        filled_BxN, np.take_along_axis(scores_BxK[done_B], cols_BxN, axis=1), -np.inf)
    pending = pending[~done_B]
    if not pending.size:
      return _rescored(user_BxD, item_IxD, items_BxN, scores_BxN)
    if exact_index and (search == 1 or k == num_items):  # The approximate index ran dry.
      index, exact_index = exact_index(), None
    k = min(num_items, max(2 * k, int(need_B[pending].max())))


def search(index: faiss.Index, item_emb: np.ndarray, user_BxD: np.ndarray, indptr: np.ndarray,
           indices: np.ndarray, top_n: int, exact_index=None):
  """`recall_top_n` for one batch over a built index of `item_emb`, quietly (serving calls
  it per batch): (items [B, N], scores [B, N]). `exact_index()` gives the flat index an
  approximate one falls back to."""
  with _flat_search_settings():
    return _recall_batch(index, exact_index, np.ascontiguousarray(user_BxD, np.float32),
                         np.asarray(indptr, np.int64), np.asarray(indices, np.int64), top_n,
                         np.ascontiguousarray(item_emb, np.float32))


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
    index: "flat" (exact, see "Exactness" above), "ivf", "hnsw", an IndexConfig,
      or a faiss index already holding item_emb (an IndexFlatIP is searched
      exactly). Users an approximate index leaves short are searched exactly.
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
  # |u.v| and its partial sums are at most D * max|u_k| * max|v_k|.
  if num_users and user_emb.shape[1] * float(np.abs(user_emb).max()) * float(
      np.abs(item_emb).max()) > 1e37:
    raise errors.InputError("embeddings too large: inner products overflow float32")
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
  exact_index = None if exact else functools.cache(lambda: build_index(item_emb, IndexConfig()))
  items_UxN = np.full((num_users, top_n), -1, np.int64)
  scores_UxN = np.full((num_users, top_n), -np.inf, np.float32)
  last_log = start
  with _flat_search_settings():
    for lo in range(0, num_users, batch_size):
      hi = min(num_users, lo + batch_size)
      indptr = visited_indptr[lo:hi + 1] - visited_indptr[lo]
      indices = visited_indices[visited_indptr[lo]:visited_indptr[hi]]
      items_UxN[lo:hi], scores_UxN[lo:hi] = _recall_batch(
          faiss_index, exact_index, user_emb[lo:hi], indptr, indices, top_n, item_emb)
      now = time.perf_counter()
      if now - last_log >= log_every_s and hi < num_users:
        console.info("%s: %d/%d users, %.0f users/s", PROG, hi, num_users,
                     hi / (now - start))
        last_log = now
  elapsed = time.perf_counter() - start
  console.info("%s: %d users x %d items in %.1f s (%.0f users/s, %s search)", PROG,
               num_users, num_items, elapsed, num_users / max(elapsed, 1e-9),
               "exact" if exact else type(faiss_index).__name__)
  return items_UxN, scores_UxN


def check_paths(cfg: RecallConfig) -> None:
  for name in ("embeddings", "output"):
    if not getattr(cfg, name):
      raise InputError(f"--{name} is required")
  out_dir = os.path.dirname(os.path.abspath(cfg.output))
  if not os.path.isdir(out_dir):
    raise InputError(f"--output={cfg.output}: directory {out_dir} does not exist")
  if os.path.isdir(cfg.output):
    raise InputError(f"--output={cfg.output}: is a directory")
  if os.path.exists(cfg.output) and os.path.samefile(cfg.output, cfg.embeddings):
    raise InputError(f"--output={cfg.output}: is the --embeddings file; refusing to overwrite it")
  if recall_lists.output_format(cfg.output) is None:  # refused before the embeddings are read
    raise InputError(f"--output={cfg.output}: no output format has this suffix; use {recall_lists.SUFFIXES}")


def recall_to_file(cfg: RecallConfig, index_config: IndexConfig) -> None:
  """Recalls every user of cfg.embeddings (this shard's) into cfg.output."""
  check_paths(cfg)
  if cfg.num_threads:
    faiss.omp_set_num_threads(cfg.num_threads)
  emb = load_embeddings(cfg.embeddings)
  num_items = len(emb.item_ids)
  if cfg.top_n > num_items:
    raise InputError(f"--top_n={cfg.top_n} is larger than the catalog of {cfg.embeddings} ({num_items} items)")
  if index_config.ivf_nlist is not None and index_config.ivf_nlist > num_items:
    raise InputError(f"--ivf_nlist={index_config.ivf_nlist} is larger than the catalog of {cfg.embeddings} "
                     f"({num_items} items)")
  emb = emb.shard(cfg.num_shards, cfg.shard_index)
  if cfg.load_index:
    index = load_index(cfg.load_index, item_fingerprint(emb.item_ids, emb.item_emb))
    if isinstance(index, faiss.IndexIVF):  # search breadth is this run's choice
      index.nprobe = min(index_config.ivf_nprobe, index.nlist)
    elif isinstance(index, faiss.IndexHNSW):
      index.hnsw.efSearch = index_config.hnsw_ef_search
  else:
    index = build_index(emb.item_emb, index_config)
    if cfg.save_index:
      save_index(index, cfg.save_index, item_fingerprint(emb.item_ids, emb.item_emb))
  # Users in chunks, each written as it is recalled: memory stays flat in the user count.
  with recall_lists.ListWriter(cfg.output, emb.item_ids, cfg.with_scores) as writer:
    for lo in range(0, max(len(emb.user_ids), 1), CHUNK_USERS):
      hi = min(lo + CHUNK_USERS, len(emb.user_ids))
      indptr = emb.visited_indptr[lo:hi + 1]
      items_UxN, scores_UxN = recall_top_n(
          emb.user_emb[lo:hi], emb.item_emb, indptr - indptr[0], emb.visited_indices[indptr[0]:indptr[-1]],
          cfg.top_n, index=index, batch_size=cfg.batch_size)
      writer.write(emb.user_ids[lo:hi], items_UxN, scores_UxN)


if __name__ == "__main__":  # python -m jaxrec.recall: the command line lives in recall_cli
  from jaxrec import recall_cli
  recall_cli.run()
