"""Tests for jaxrec.recall: exact lists equal the design note's loop; CLI; errors."""

import os
import subprocess
import sys

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrec import errors
from jaxrec import recall

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def note_loop(user_emb, item_emb, visited_indptr, visited_indices, top_n):
  """The design note's one-user-at-a-time recall, written literally."""
  d, num_users = item_emb.shape[1], len(user_emb)
  index = faiss.IndexFlatIP(d)
  index.add(item_emb)
  lists = []
  for i in range(num_users):
    visited = set(visited_indices[visited_indptr[i]:visited_indptr[i + 1]].tolist())
    _, I = index.search(user_emb[i:i + 1], int(top_n * 24 + 3 * len(visited)))
    rec = [j for j in I[0] if j != -1 and j not in visited][:top_n]
    lists.append(rec)
  return lists


def make_arrays(seed, num_users, num_items, dim, max_visits, kind="normal"):
  """Random exported arrays; visits are drawn with replacement (so may repeat).

  kind: "normal"; "near_ties" (items in groups of 8 that differ by ~1e-6, so
  scores differ by about the float32 rounding error); "ties" (small integers:
  exact ties everywhere); "clustered" (50 clusters).
  """
  rng = np.random.default_rng(seed)
  if kind == "near_ties":
    base = rng.standard_normal((-(-num_items // 8), dim), dtype=np.float32)
    items = np.repeat(base, 8, axis=0)[:num_items]
    items += 1e-6 * rng.standard_normal(items.shape, dtype=np.float32)
    users = rng.standard_normal((num_users, dim), dtype=np.float32)
  elif kind == "ties":
    items = rng.integers(-2, 3, (num_items, dim)).astype(np.float32)
    users = rng.integers(-2, 3, (num_users, dim)).astype(np.float32)
  elif kind == "clustered":
    centers = rng.standard_normal((50, dim), dtype=np.float32)
    items = centers[rng.integers(0, 50, num_items)]
    items += 0.3 * rng.standard_normal(items.shape, dtype=np.float32)
    users = centers[rng.integers(0, 50, num_users)]
    users += 0.3 * rng.standard_normal(users.shape, dtype=np.float32)
  else:
    items = rng.standard_normal((num_items, dim), dtype=np.float32)
    users = rng.standard_normal((num_users, dim), dtype=np.float32)
  visits = rng.integers(0, max_visits + 1, num_users)
  indptr = np.concatenate([[0], np.cumsum(visits)])
  return dict(
      user_ids=np.array([f"user{u}" for u in range(num_users)]),
      user_emb=users,
      item_ids=np.array([f"item-{j:05d}" for j in range(num_items)]),
      item_emb=items,
      visited_indptr=indptr,
      visited_indices=rng.integers(0, num_items, indptr[-1]))


@pytest.fixture
def faiss_threads():
  """Sets faiss's OpenMP thread count for one test, then restores it."""
  old = faiss.omp_get_max_threads()
  yield faiss.omp_set_num_threads
  faiss.omp_set_num_threads(old)


@pytest.fixture
def npz_file(tmp_path):
  """Writes arrays to an .npz under tmp_path and returns its path."""
  def write(arrays, name="emb.npz"):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path
  return write


def _recall(arrays, top_n, **kwargs):
  return recall.recall_top_n(arrays["user_emb"], arrays["item_emb"],
                             arrays["visited_indptr"], arrays["visited_indices"],
                             top_n, **kwargs)


def _lists(items_UxN):
  return [row[row >= 0].tolist() for row in items_UxN]


@pytest.mark.parametrize(
    "seed, num_users, num_items, dim, max_visits, top_n, threads, kind", [
        (0, 300, 2000, 64, 30, 50, 1, "normal"),
        (1, 300, 2000, 37, 30, 50, 2, "normal"),
        (2, 300, 3000, 64, 30, 50, 1, "near_ties"),
        # >= 10k items on 2 threads: faiss scores one query with sgemm there.
        (3, 60, 10240, 32, 30, 50, 2, "normal"),
        (4, 60, 10240, 32, 30, 50, 2, "near_ties"),
        (9, 300, 20000, 64, 30, 50, 2, "normal"),
        # Small catalog: k is capped at the number of items.
        (5, 200, 60, 8, 40, 20, 1, "normal"),
        # Many (repeated) visits; some users have fewer than top_n unvisited items.
        (6, 200, 500, 16, 500, 10, 1, "normal"),
        (7, 200, 500, 16, 3, 10, 1, "ties"),
    ])
def test_exact_matches_note_loop(faiss_threads, seed, num_users, num_items, dim,
                                 max_visits, top_n, threads, kind):
  faiss_threads(threads)
  arrays = make_arrays(seed, num_users, num_items, dim, max_visits, kind)
  expected = note_loop(arrays["user_emb"], arrays["item_emb"],
                       arrays["visited_indptr"], arrays["visited_indices"], top_n)
  items, scores = _recall(arrays, top_n, batch_size=128)
  assert _lists(items) == expected
  assert items.shape == scores.shape == (num_users, top_n)
  assert (np.diff(scores, axis=1) <= 0).all()
  assert (np.isneginf(scores) == (items < 0)).all()


@pytest.mark.parametrize("kind, threads", [("normal", 1), ("near_ties", 1), ("near_ties", 2), ("ties", 1)])
def test_exact_unknown_one_query_arithmetic_matches_note_loop(faiss_threads, monkeypatch, kind, threads):
  """Where faiss's one-query arithmetic cannot be told (as on some CPUs), the users whose
  lists hold near-tied items are searched one at a time: still the note's lists."""
  faiss_threads(threads)
  monkeypatch.setattr(recall, "_single_query_scoring", lambda index, item_emb: "single")
  arrays = make_arrays(8, 150, 3000, 24, 30, kind)
  expected = note_loop(arrays["user_emb"], arrays["item_emb"],
                       arrays["visited_indptr"], arrays["visited_indices"], 40)
  items, scores = _recall(arrays, 40, batch_size=64)
  assert _lists(items) == expected
  assert (np.diff(scores, axis=1) <= 0).all()


# faiss_threads is set anew in each example and restored once, after the last.
@settings(deadline=None, max_examples=30,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.integers(1, 130), st.sampled_from([1, 2]),
       st.sampled_from([300, 10240]))
def test_rounding_bound_holds_per_pair(faiss_threads, seed, dim, threads, num_items):
  """Every float32 score faiss gives (one-query search, SIMD by index, batched sgemm,
  one-query sgemm) is within half `_pair_error` of the float64 inner product, so any two
  differ by at most `_pair_error`: the bound that decides which users are rescored."""
  rng = np.random.default_rng(seed)
  # Norms spread over four decades, so a bound from max|v| would be far looser.
  # (>= 10k items on 2 threads: the one-row sgemm of step 5.)
  items = rng.standard_normal((num_items, dim)) * 10.0 ** rng.uniform(-2, 2, (num_items, 1))
  users = rng.standard_normal((20, dim)) * 10.0 ** rng.uniform(-2, 2, (20, 1))
  items, users = items.astype(np.float32), users.astype(np.float32)
  ids = np.tile(np.arange(len(items)), (len(users), 1))
  exact = users.astype(np.float64) @ items.astype(np.float64).T
  bound = recall._pair_error(users, items, ids)
  faiss_threads(threads)
  index = faiss.IndexFlatIP(dim)
  index.add(items)
  with recall._blas_search():
    batched = _scores_by_id(*index.search(users, len(items)))
  single = np.concatenate([_scores_by_id(*index.search(u[None], len(items))) for u in users])
  rows = np.stack([recall._row_scores(u, items, np.arange(len(items))) for u in users])
  for scores in (batched, single, rows, recall._simd_scores(users, items, ids)):
    assert (np.abs(scores - exact) <= bound / 2).all()


def _scores_by_id(scores_BxK, ids_BxK):
  """Search results back in item order: [B, I] with every item listed once."""
  out = np.empty(scores_BxK.shape, np.float64)
  np.put_along_axis(out, ids_BxK, scores_BxK, axis=1)
  return out


def test_row_scores_match_one_query_search_where_detected(faiss_threads):
  """Where `_single_query_scoring` says "row", a one-query sgemm over a few items in any
  order gives each the score of a one-query search over the whole catalog (2 threads:
  faiss splits one query's catalog over them, as on the CPU where this was found)."""
  faiss_threads(2)
  arrays = make_arrays(10, 40, 12000, 64, 0)
  items = arrays["item_emb"]
  index = recall.build_index(items, recall.IndexConfig())
  if recall._single_query_scoring(index, items) != "row":
    pytest.skip("faiss scores one query otherwise on this machine")
  rng = np.random.default_rng(0)
  for user in arrays["user_emb"]:
    scores, ids = index.search(user[None], 80)
    order = rng.permutation(80)
    assert np.array_equal(recall._row_scores(user, items, ids[0][order]), scores[0][order])


def test_exact_heavy_visitor_matches_note_loop():
  # One user visits far more than the rest: K is sized for the others first.
  arrays = make_arrays(8, 150, 2000, 16, 5)
  heavy = np.random.default_rng(0).integers(0, 2000, 900)
  lo, hi = arrays["visited_indptr"][3:5]
  arrays["visited_indices"] = np.concatenate(
      [arrays["visited_indices"][:lo], heavy, arrays["visited_indices"][hi:]])
  arrays["visited_indptr"][4:] += len(heavy) - (hi - lo)
  expected = note_loop(arrays["user_emb"], arrays["item_emb"],
                       arrays["visited_indptr"], arrays["visited_indices"], 30)
  items, _ = _recall(arrays, 30)
  assert _lists(items) == expected


def test_prebuilt_index():
  arrays = make_arrays(0, 50, 1000, 16, 5, kind="clustered")
  exact, _ = _recall(arrays, 10)
  flat = faiss.IndexFlatIP(16)
  flat.add(arrays["item_emb"])
  np.testing.assert_array_equal(_recall(arrays, 10, index=flat)[0], exact)
  hnsw = recall.build_index(arrays["item_emb"], recall.IndexConfig("hnsw"))
  assert (_recall(arrays, 10, index=hnsw)[0] >= 0).all()
  with pytest.raises(errors.InputError, match="holds 0 x 16"):
    _recall(arrays, 10, index=faiss.IndexFlatIP(16))


def test_exact_scores_are_inner_products():
  arrays = make_arrays(0, 50, 300, 16, 5)
  items, scores = _recall(arrays, 10)
  expected = np.einsum("ud,und->un", arrays["user_emb"], arrays["item_emb"][items])
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_exact_short_lists_when_catalog_runs_out():
  arrays = make_arrays(0, 2, 5, 4, 0)
  arrays["visited_indptr"] = np.array([0, 4, 4])
  arrays["visited_indices"] = np.array([0, 1, 1, 3])
  items, scores = _recall(arrays, 4)
  assert _lists(items) == note_loop(arrays["user_emb"], arrays["item_emb"],
                                    arrays["visited_indptr"],
                                    arrays["visited_indices"], 4)
  assert (items[0, 2:] == -1).all() and np.isneginf(scores[0, 2:]).all()
  assert (items[1] >= 0).all()


@pytest.mark.parametrize("index", [
    recall.IndexConfig("ivf"),
    recall.IndexConfig("hnsw"),
])
def test_approximate_has_high_recall(index):
  arrays = make_arrays(0, 300, 5000, 32, 20, kind="clustered")
  exact, _ = _recall(arrays, 20)
  approx, _ = _recall(arrays, 20, index=index)
  assert (approx >= 0).all()
  hits = [len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist())]
  assert np.sum(hits) / exact.size > 0.9
  for u, row in enumerate(approx.tolist()):
    lo, hi = arrays["visited_indptr"][u:u + 2]
    assert not set(row) & set(arrays["visited_indices"][lo:hi].tolist())
    assert len(set(row)) == len(row)


def test_approximate_short_users_fall_back_to_exact():
  # One of 10 lists probed (~40 items) cannot hold top_n=100 unvisited items.
  arrays = make_arrays(0, 20, 400, 8, 30)
  index = recall.IndexConfig("ivf", ivf_nlist=10, ivf_nprobe=1)
  items, _ = _recall(arrays, 100, index=index)
  exact, _ = _recall(arrays, 100)
  assert (items >= 0).all()
  np.testing.assert_array_equal(items, exact)


def _run_cli(cwd, *args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "jaxrec.recall", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=60)


def _read_tsv(path):
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n").split("\t") for line in f]


def test_cli_writes_raw_ids(tmp_path, npz_file):
  arrays = make_arrays(0, 40, 300, 16, 10)
  path = npz_file(arrays)
  result = _run_cli(tmp_path, f"--embeddings={path}", "--top_n=7", "--output=out.tsv")
  assert result.returncode == 0, result.stderr
  expected = note_loop(arrays["user_emb"], arrays["item_emb"],
                       arrays["visited_indptr"], arrays["visited_indices"], 7)
  names = arrays["item_ids"]
  assert _read_tsv(tmp_path / "out.tsv") == [
      [f"user{u}", ",".join(names[row])] for u, row in enumerate(expected)]


def test_cli_with_scores_and_shards(tmp_path, npz_file):
  arrays = make_arrays(1, 41, 300, 16, 10)
  path = npz_file(arrays)
  result = _run_cli(tmp_path, f"--embeddings={path}", "--top_n=5",
                    "--output=all.tsv", "--with_scores")
  assert result.returncode == 0, result.stderr
  items, scores = _recall(arrays, 5)
  rows = _read_tsv(tmp_path / "all.tsv")
  for u, (user, line) in enumerate(rows):
    pairs = [p.split(":") for p in line.split(",")]
    assert user == f"user{u}"
    assert [name for name, _ in pairs] == arrays["item_ids"][items[u]].tolist()
    np.testing.assert_allclose([float(s) for _, s in pairs], scores[u], rtol=1e-6)
  shards = []
  for shard in range(3):
    result = _run_cli(tmp_path, f"--embeddings={path}", "--top_n=5",
                      f"--output=shard{shard}.tsv", "--with_scores",
                      "--num_shards=3", f"--shard_index={shard}")
    assert result.returncode == 0, result.stderr
    shards += _read_tsv(tmp_path / f"shard{shard}.tsv")
  assert shards == rows


def _without(arrays, name):
  return {k: v for k, v in arrays.items() if k != name}


@pytest.mark.parametrize("change, flag, message", [
    (lambda a: _without(a, "item_emb"), "--top_n=5", "missing array(s) item_emb"),
    (lambda a: dict(a, user_ids=a["user_ids"].astype(object)), "--top_n=5",
     "user_ids holds pickled Python objects"),
    (lambda a: dict(a, item_emb=a["item_emb"][:, :-1]), "--top_n=5",
     "user_emb has size 16 but item_emb has size 15"),
    (lambda a: a, "--top_n=301", "--top_n=301 is larger than the catalog"),
    (None, "--top_n=5", "no such file"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, npz_file, change, flag, message):
  arrays = make_arrays(0, 10, 300, 16, 3)
  path = npz_file(change(arrays)) if change else str(tmp_path / "missing.npz")
  result = _run_cli(tmp_path, f"--embeddings={path}", flag, "--output=out.tsv")
  assert result.returncode == errors.EXIT_USAGE
  assert result.stderr.startswith("jaxrec.recall: error: ")
  assert result.stderr.count("\n") == 1 and message in result.stderr
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(tmp_path)) == sorted(
      [os.path.basename(path)] if change else [])


@pytest.mark.parametrize("change, message", [
    (lambda a: dict(a, visited_indptr=a["visited_indptr"][::-1]), "never decrease"),
    (lambda a: dict(a, visited_indptr=a["visited_indptr"][:-1]), "expected 11"),
    (lambda a: dict(a, visited_indices=a["visited_indices"][:-1]), "but visited_indices has"),
    (lambda a: dict(a, visited_indices=a["visited_indices"] + 300), "out of range"),
    (lambda a: dict(a, user_ids=a["user_ids"][:-1]), "user_emb has 10 rows but user_ids"),
    (lambda a: dict(a, item_emb=np.where(a["item_emb"] > 2.5, np.nan, a["item_emb"])),
     "item_emb has non-finite values"),
    (lambda a: dict(a, item_ids=np.char.add(a["item_ids"], ",")), "contains ','"),
    (lambda a: dict(a, user_ids=np.full(10, "same")), "user_ids has duplicates"),
    (lambda a: dict(a, user_emb=a["user_emb"].astype(int)), "must be a 2-D float"),
])
def test_load_rejects_bad_arrays(npz_file, change, message):
  arrays = make_arrays(0, 10, 300, 16, 3)
  path = npz_file(change(arrays))
  with pytest.raises(errors.InputError) as info:
    recall.load_embeddings(path)
  assert message in str(info.value) and path in str(info.value)


def test_load_rejects_non_npz(tmp_path):
  text = tmp_path / "emb.npz"
  text.write_text("not numpy\n")
  with pytest.raises(errors.InputError, match="not an .npz archive"):
    recall.load_embeddings(str(text))
  with pytest.raises(errors.InputError, match="is a directory"):
    recall.load_embeddings(str(tmp_path))


def test_import_does_not_pull_in_jax():
  code = ("import jaxrec.recall, sys; "
          "assert 'jax' not in sys.modules and 'flax' not in sys.modules")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
