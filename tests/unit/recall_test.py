"""Tests for jaxrec.recall: the exactness contract against float64; CLI; output formats; errors."""

import csv
import json
import os
import subprocess
import sys

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrec import errors
from jaxrec import recall
from jaxrec import recall_lists

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def check_contract(user_emb, item_emb, visited_indptr, visited_indices, top_n,
                   items_UxN, scores_UxN):
  """Asserts jaxrec.recall's exactness contract, user by user, against float64.

  With s = u.v in float64 and tol_u = (D + 2) * 2^-23 * max_j sum_k |u_k v_jk|,
  each user's list (a) holds distinct unvisited items, then -1 / -inf fill;
  (b) has min(top_n, unvisited) items; (c) s[i+1] <= s[i] + tol_u; (d) its last
  s >= the best unlisted unvisited s - tol_u; (e) each float32 score is within
  tol_u of its s.
  """
  num_users, num_items = len(user_emb), len(item_emb)
  assert items_UxN.shape == scores_UxN.shape == (num_users, top_n)
  assert items_UxN.dtype == np.int64 and scores_UxN.dtype == np.float32
  users, items = user_emb.astype(np.float64), item_emb.astype(np.float64)
  exact_UxI = users @ items.T
  tol_U = (users.shape[1] + 2) * 2.0**-23 * (np.abs(users) @ np.abs(items).T).max(axis=1)
  for u in range(num_users):
    visited = set(visited_indices[visited_indptr[u]:visited_indptr[u + 1]].tolist())
    row = items_UxN[u].tolist()
    n = sum(j >= 0 for j in row)
    listed, tol, s = row[:n], tol_U[u], exact_UxI[u]
    assert all(j == -1 for j in row[n:]), f"user {u}: -1 before an item"
    assert np.isneginf(scores_UxN[u, n:]).all(), f"user {u}: fill score is not -inf"
    assert len(set(listed)) == n, f"user {u}: an item is listed twice"
    assert all(0 <= j < num_items for j in listed), f"user {u}: no such item"
    assert not visited & set(listed), f"user {u}: visited item listed"
    unvisited = set(range(num_items)) - visited
    assert n == min(top_n, len(unvisited)), f"user {u}: {n} items listed"
    for i in range(n - 1):
      assert s[listed[i + 1]] <= s[listed[i]] + tol, f"user {u}: out of order at {i}"
    rest = list(unvisited - set(listed))
    if n and rest:
      assert s[listed[-1]] >= s[rest].max() - tol, f"user {u}: a better item left out"
    for i, j in enumerate(listed):
      assert abs(float(scores_UxN[u, i]) - s[j]) <= tol, f"user {u}: score of item {j}"


def make_arrays(seed, num_users, num_items, dim, max_visits, kind="normal",
                heavy_visitors=0):
  """Random exported arrays; visits are drawn with replacement (so may repeat).

  kind: "normal"; "near_ties" (a few base vectors, each copied many times, some
  copies exact, the others perturbed by ~1e-7 relative: scores within float32
  rounding of each other, and exact ties); "ties" (small integers: exact ties
  everywhere); "clustered" (50 clusters). `heavy_visitors` users visit their own
  best half or more of the items.
  """
  rng = np.random.default_rng(seed)
  if kind == "near_ties":
    base = rng.standard_normal((max(1, num_items // 16), dim), dtype=np.float32)
    items = base[rng.integers(0, len(base), num_items)]
    noise = rng.standard_normal(items.shape, dtype=np.float32)
    items *= 1 + 1e-7 * noise * (rng.random((num_items, 1)) < 0.5)
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
  visits = [rng.integers(0, num_items, rng.integers(0, max_visits + 1))
            for _ in range(num_users)]
  for u in rng.choice(num_users, min(heavy_visitors, num_users), replace=False):
    # The user's own best items, as a trained model would rank them.
    best = np.argsort(-(items.astype(np.float64) @ users[u]), kind="stable")
    visits[u] = best[:rng.integers(num_items // 2, num_items + 1)]
  return dict(
      user_ids=np.array([f"user{u}" for u in range(num_users)]),
      user_emb=users,
      item_ids=np.array([f"item-{j:05d}" for j in range(num_items)]),
      item_emb=items,
      visited_indptr=np.cumsum([0] + [len(v) for v in visits]),
      visited_indices=np.concatenate(visits + [np.zeros(0, np.int64)]))


@pytest.fixture
def faiss_threads():
  """Sets faiss's OpenMP thread count for one test, then restores it."""
  old = faiss.omp_get_max_threads()
  yield faiss.omp_set_num_threads
  faiss.omp_set_num_threads(old)


def _recall(arrays, top_n, **kwargs):
  return recall.recall_top_n(arrays["user_emb"], arrays["item_emb"],
                             arrays["visited_indptr"], arrays["visited_indices"],
                             top_n, **kwargs)


def _check(arrays, top_n, items, scores):
  check_contract(arrays["user_emb"], arrays["item_emb"], arrays["visited_indptr"],
                 arrays["visited_indices"], top_n, items, scores)


def _lists(items_UxN):
  return [row[row >= 0].tolist() for row in items_UxN]


# faiss_threads is set anew in each example and restored once, after the last.
@settings(deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1),
       shape=st.sampled_from([(60, 300, 16), (40, 2000, 64), (30, 10240, 37), (50, 40, 8)]),
       kind=st.sampled_from(["normal", "near_ties", "ties"]),
       top_n=st.sampled_from([1, 10, 50]),
       max_visits=st.sampled_from([0, 5, 60]),
       heavy_visitors=st.integers(0, 3),
       threads=st.sampled_from([1, 2]),
       batch_size=st.sampled_from([7, 4096]))
def test_exact_meets_contract(faiss_threads, seed, shape, kind, top_n, max_visits,
                              heavy_visitors, threads, batch_size):
  num_users, num_items, dim = shape
  top_n = min(top_n, num_items)
  arrays = make_arrays(seed, num_users, num_items, dim, max_visits, kind, heavy_visitors)
  faiss_threads(threads)
  items, scores = _recall(arrays, top_n, batch_size=batch_size)
  _check(arrays, top_n, items, scores)
  assert (scores[:, 1:] <= scores[:, :-1]).all()  # by float32 score, as computed


@pytest.mark.parametrize("kind", ["near_ties", "ties"])
def test_exact_is_deterministic(faiss_threads, kind):
  """The same input gives the same arrays, run after run, on 2 threads; exact float32
  ties go by item index ascending."""
  faiss_threads(2)
  arrays = make_arrays(11, 3000, 12000, 64, 30, kind, heavy_visitors=5)
  first = _recall(arrays, 50, batch_size=1024)
  for _ in range(2):
    again = _recall(arrays, 50, batch_size=1024)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
  items, scores = first
  tied = (scores[:, 1:] == scores[:, :-1]) & (items[:, 1:] >= 0)
  assert tied.any()
  assert (items[:, 1:][tied] > items[:, :-1][tied]).all()


def test_contract_checker_can_fail():
  arrays = make_arrays(3, 20, 500, 16, 10)
  items, scores = _recall(arrays, 10)
  _check(arrays, 10, items, scores)
  indptr = arrays["visited_indptr"]
  u = int(np.flatnonzero(np.diff(indptr))[0])  # a user with visits
  visited = arrays["visited_indices"][indptr[u]:indptr[u + 1]]
  s_I = arrays["item_emb"] @ arrays["user_emb"][u]
  worst = [j for j in np.argsort(s_I) if j not in visited][0]

  def swap_in_worst(i, s):
    i[u, -1], s[u, -1] = worst, s_I[worst]
  def list_visited(i, s):
    i[u, 3] = visited[0]
  def repeat(i, s):
    i[u, 4] = i[u, 3]
  def reverse(i, s):
    i[u], s[u] = i[u, ::-1].copy(), s[u, ::-1].copy()
  def wrong_score(i, s):
    s[u, 2] += 1e-3
  def too_short(i, s):
    i[u, -1], s[u, -1] = -1, -np.inf
  for fix, message in [(swap_in_worst, "a better item left out"),
                       (list_visited, "visited item listed"),
                       (repeat, "an item is listed twice"), (reverse, "out of order"),
                       (wrong_score, "score of item"), (too_short, "9 items listed")]:
    bad = items.copy(), scores.copy()
    fix(*bad)
    with pytest.raises(AssertionError, match=message):
      _check(arrays, 10, *bad)


@pytest.mark.parametrize("kind", ["normal", "near_ties"])
def test_note_loop_meets_contract_too(kind):
  """The design note's lists (one-query faiss arithmetic) pass the same checker: the
  contract holds whatever the float32 summation order."""
  arrays = make_arrays(5, 60, 3000, 64, 30, kind)
  lists = note_loop(arrays["user_emb"], arrays["item_emb"], arrays["visited_indptr"],
                    arrays["visited_indices"], 20)
  items = np.array(lists)
  scores = np.einsum("ud,und->un", arrays["user_emb"], arrays["item_emb"][items])
  _check(arrays, 20, items, scores.astype(np.float32))


class _CountingFlatIP(faiss.IndexFlatIP):
  """An IndexFlatIP that records (queries, k) of each search."""
  searches = None  # declared here: faiss refuses new attributes on its objects

  def __init__(self, items):
    super().__init__(items.shape[1])
    self.add(items)
    self.searches = []

  def search(self, x, k, **kwargs):
    self.searches.append((len(x), k))
    return super().search(x, k, **kwargs)


def test_exact_heavy_visitor_is_searched_again():
  """K is sized for 99% of the batch; a user who visited its own best 900 items is
  searched again, with K large enough for its visits."""
  arrays = make_arrays(8, 150, 2000, 16, 5)
  u = 3
  best = np.argsort(-(arrays["item_emb"] @ arrays["user_emb"][u]))[:900]
  lo, hi = arrays["visited_indptr"][u:u + 2]
  arrays["visited_indices"] = np.concatenate(
      [arrays["visited_indices"][:lo], best, arrays["visited_indices"][hi:]])
  arrays["visited_indptr"][u + 1:] += len(best) - (hi - lo)
  index = _CountingFlatIP(arrays["item_emb"])
  items, scores = _recall(arrays, 30, index=index)
  _check(arrays, 30, items, scores)
  (users_1, k_1), (users_2, k_2) = index.searches
  assert users_1 == 150 and k_1 <= 30 + 5 and users_2 == 1 and k_2 >= 930


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
  _check(arrays, 4, items, scores)
  assert set(items[0, :2].tolist()) == {2, 4}
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
  _check(arrays, 100, *_recall(arrays, 100, index=index))


def _run_cli(cwd, *args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "jaxrec.recall", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=60)


def _read_tsv(path):
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n").split("\t") for line in f]


@pytest.mark.e2e  # starts jaxrec processes
def test_cli_writes_raw_ids(tmp_path, npz_file):
  arrays = make_arrays(0, 40, 300, 16, 10)
  path = npz_file(arrays)
  result = _run_cli(tmp_path, f"--embeddings={path}", "--top_n=7", "--output=out.tsv")
  assert result.returncode == 0, result.stderr
  items, scores = _recall(arrays, 7)
  _check(arrays, 7, items, scores)
  names = arrays["item_ids"]
  assert _read_tsv(tmp_path / "out.tsv") == [
      [f"user{u}", ",".join(names[row])] for u, row in enumerate(_lists(items))]


@pytest.mark.e2e  # starts jaxrec processes
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


@pytest.mark.e2e  # starts jaxrec processes
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_cli_saved_index_gives_the_same_lists_and_refuses_other_items(tmp_path, npz_file, kind):
  arrays = make_arrays(2, 60, 2000, 16, 10)
  path = npz_file(arrays)
  flags = [f"--embeddings={path}", "--top_n=5", f"--index={kind}", "--ivf_nlist=20", "--with_scores"]
  assert _run_cli(tmp_path, *flags, "--output=built.tsv", "--save_index=items.faiss").returncode == 0
  assert (tmp_path / "items.faiss").exists() and (tmp_path / "items.faiss.json").exists()
  for shard in range(2):
    result = _run_cli(tmp_path, *flags, f"--output=loaded{shard}.tsv", "--load_index=items.faiss",
                      "--num_shards=2", f"--shard_index={shard}")
    assert result.returncode == 0, result.stderr
  loaded = _read_tsv(tmp_path / "loaded0.tsv") + _read_tsv(tmp_path / "loaded1.tsv")
  assert loaded == _read_tsv(tmp_path / "built.tsv")
  other = dict(arrays, item_emb=arrays["item_emb"] * np.float32(1.5))
  result = _run_cli(tmp_path, f"--embeddings={npz_file(other, 'other.npz')}", "--top_n=5",
                    "--output=x.tsv", "--load_index=items.faiss")
  assert result.returncode == 2 and not (tmp_path / "x.tsv").exists()
  assert result.stderr.strip() == ("jaxrec.recall: error: --load_index=items.faiss: built over other "
                                   "item ids or vectors than --embeddings")


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
@pytest.mark.e2e  # starts jaxrec processes
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


def _odd_id_arrays():
  """Ids a CSV or JSON writer must quote or escape: commas and double quotes in user ids, double
  quotes in item ids, non-ASCII in both (load_embeddings refuses tabs, line breaks, and commas in
  item ids). User 1 has 3 unvisited items left (a short list), user 2 none (an empty one)."""
  arrays = make_arrays(4, 12, 40, 8, 5)
  arrays["user_ids"] = np.array([f'user {u}, "ü{u}" 用户' for u in range(12)])
  arrays["item_ids"] = np.array([f'item "{j}" é→{j}' for j in range(40)])
  indptr, indices = arrays["visited_indptr"], arrays["visited_indices"]
  visits = [indices[lo:hi] for lo, hi in zip(indptr[:-1], indptr[1:])]
  visits[1], visits[2] = np.arange(3, 40), np.arange(40)
  arrays["visited_indptr"] = np.cumsum([0] + [len(v) for v in visits])
  arrays["visited_indices"] = np.concatenate(visits)
  return arrays


def _read_lists(path, with_scores):
  """[(user, [item, ...], [float32 score as float, ...])] read back from a recall output with
  csv, json or pyarrow, or split from TSV lines; [] for the scores without with_scores."""
  path = str(path)
  split = lambda text: text.split(",") if text else []
  if path.endswith(".parquet"):
    rows = [(r["user"], r["items"], r.get("scores", [])) for r in pq.read_table(path).to_pylist()]
  elif path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    assert all(set(r) == {"user", "items"} | ({"scores"} if with_scores else set()) for r in records)
    assert all(isinstance(s, float) for r in records for s in r.get("scores", []))
    rows = [(r["user"], r["items"], r.get("scores", [])) for r in records]
  elif path.endswith(".csv"):
    with open(path, encoding="utf-8", newline="") as f:
      header, *records = csv.reader(f)
    assert header == ["user", "items"] + (["scores"] if with_scores else [])
    assert all(len(r) == len(header) for r in records)
    rows = [(r[0], split(r[1]), [float(s) for s in split(r[2])] if with_scores else []) for r in records]
  else:
    rows = []
    for user, line in _read_tsv(path):
      cells = [cell.rsplit(":", 1) if with_scores else (cell, None) for cell in split(line)]
      rows.append((user, [name for name, _ in cells], [float(s) for _, s in cells] if with_scores else []))
  return [(user, items, np.float32(scores).tolist()) for user, items, scores in rows]


def _in_memory_lists(user_ids, item_ids, items_UxN, scores_UxN=None):
  """_read_lists's rows for lists held in arrays: index -1 left out."""
  keep_UxN = items_UxN >= 0
  return [(user, np.asarray(item_ids)[row[keep]].tolist(),
           scores_UxN[u][keep].astype(np.float32).tolist() if scores_UxN is not None else [])
          for u, (user, row, keep) in enumerate(zip(user_ids.tolist(), items_UxN, keep_UxN))]


@pytest.mark.parametrize("with_scores", [False, True])
def test_output_formats_hold_the_same_lists(tmp_path, npz_file, with_scores):
  """Each suffix's format, read back with csv, json or pyarrow, holds exactly the in-memory lists
  and float32 scores, ids with commas, quotes and non-ASCII included; .txt is the .tsv's bytes."""
  arrays = _odd_id_arrays()
  path = npz_file(arrays)
  items, scores = _recall(arrays, 5)
  expected = _in_memory_lists(arrays["user_ids"], arrays["item_ids"], items, scores if with_scores else None)
  assert [len(row_items) for _, row_items, _ in expected[1:3]] == [3, 0]
  suffixes = (".tsv", ".txt", ".csv", ".jsonl", ".parquet", ".CSV")
  for suffix in suffixes:
    out = str(tmp_path / f"recall{suffix}")
    recall.recall_to_file(recall.RecallConfig(embeddings=path, output=out, top_n=5, with_scores=with_scores),
                          recall.IndexConfig())
    assert _read_lists(out.replace(".CSV", ".csv") if suffix == ".CSV" else out, with_scores) == expected, suffix
  assert (tmp_path / "recall.txt").read_bytes() == (tmp_path / "recall.tsv").read_bytes()
  assert (tmp_path / "recall.CSV").read_bytes() == (tmp_path / "recall.csv").read_bytes()
  assert (tmp_path / "recall.csv").read_bytes().startswith(b"user,items" + b",scores" * with_scores + b"\r\n")
  assert sorted(os.listdir(tmp_path)) == sorted(["emb.npz"] + [f"recall{s}" for s in suffixes])  # no temporaries


def test_list_writer_round_trips_ids_load_embeddings_refuses(tmp_path):
  """Written chunk by chunk, ids with line breaks, tabs, quotes and commas come back from CSV,
  JSONL and Parquet; CSV refuses item ids with commas (a comma-joined list could not be split
  back) before it creates a file."""
  users = np.array(["a,b", 'say "hi"', "line\nbreak\r\n", "tab\there", "ü→用户", ""])
  items_UxN = np.array([[0, 1, 2], [3, 4, -1], [2, -1, -1], [-1, -1, -1], [4, 3, 2], [1, 0, 4]])
  scores_UxN = np.where(items_UxN >= 0, np.float32([[3, 2.5, 1e-7], [-0.0, -1.25, 0], [7e10, 0, 0],
                                                     [0, 0, 0], [1 / 3, -2, -1e9], [5, 4, 3]]), -np.inf)
  scores_UxN = scores_UxN.astype(np.float32)
  for fmt, item_ids in [("csv", ['x;y', 'q"uote', "nl\nid", "é", "plain"]),
                        ("jsonl", ["x,y", 'q"uote', "nl\nid", "é", "plain"]),
                        ("parquet", ["x,y", 'q"uote', "nl\nid", "é", "plain"])]:
    for with_scores in (False, True):
      out = str(tmp_path / f"r{with_scores:d}.{fmt}")
      with recall_lists.ListWriter(out, np.array(item_ids), with_scores) as writer:
        for lo, hi in ((0, 4), (4, 6)):
          writer.write(users[lo:hi], items_UxN[lo:hi], scores_UxN[lo:hi] if with_scores else None)
      assert _read_lists(out, with_scores) == _in_memory_lists(
          users, item_ids, items_UxN, scores_UxN if with_scores else None), out
  with pytest.raises(errors.InputError, match="an item id holds a comma"):
    recall_lists.ListWriter(str(tmp_path / "comma.csv"), np.array(["x,y", "z"]), False)
  assert not (tmp_path / "comma.csv").exists()


@pytest.mark.parametrize("output", ["recall.xml", "recall", "recall.tsv.gz", "recall.json"])
def test_unknown_output_suffix_is_refused_before_reading(tmp_path, output):
  """Any other suffix used to get TSV silently; now refused before the embeddings are read (there
  are none here) and before anything is written."""
  out = str(tmp_path / output)
  cfg = recall.RecallConfig(embeddings=str(tmp_path / "missing.npz"), output=out, top_n=5)
  with pytest.raises(errors.InputError) as refused:
    recall.recall_to_file(cfg, recall.IndexConfig())
  assert str(refused.value) == (f"--output={out}: no output format has this suffix; use .tsv or .txt (TSV), "
                                ".csv, .jsonl or .parquet")
  assert os.listdir(tmp_path) == []


@pytest.mark.e2e  # starts jaxrec processes
def test_cli_writes_csv_for_a_csv_output(tmp_path, npz_file):
  """`--output=r.csv` (which used to get TSV) is a CSV that Python's csv module reads back."""
  arrays = _odd_id_arrays()
  path = npz_file(arrays)
  result = _run_cli(tmp_path, f"--embeddings={path}", "--top_n=5", "--output=r.csv", "--with_scores")
  assert result.returncode == 0, result.stderr
  items, scores = _recall(arrays, 5)
  assert _read_lists(tmp_path / "r.csv", True) == _in_memory_lists(arrays["user_ids"], arrays["item_ids"],
                                                                   items, scores)


def test_import_does_not_pull_in_jax(assert_imports_without):
  assert_imports_without("jaxrec.recall", ["jax", "flax"])
