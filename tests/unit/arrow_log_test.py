"""CSV and Parquet through Arrow against a plain-Python reference; byte-order marks; errors that
name the file and the line or row; recall lists as Parquet; --mode=inspect."""

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import click_log
from jaxrec.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = st.sampled_from(["a", "b", "10", "9", "ü", "x y", "007", "z,z", " a", "b ", " 9"])  # padded: one id with the bare one


def as_dict(log) -> dict:
  return {str(log.user_ids[u]): [str(log.item_ids[i]) for i in log.items[log.indptr[u]:log.indptr[u + 1]]]
          for u in range(log.num_users)}


def reference(rows) -> dict:
  """Clicks grouped by user, sorted by time, file order on ties: the readers' contract."""
  out = {}
  for order, (user, item, time) in sorted(enumerate(rows), key=lambda r: (r[1][2], r[0])):
    out.setdefault(user.strip(), []).append(item.strip())
  return out


@settings(deadline=None, max_examples=60)
@given(st.lists(st.tuples(IDS, IDS, st.integers(0, 5)), min_size=1, max_size=40), st.booleans())
def test_csv_and_parquet_read_as_the_reference(tmp_path_factory, rows, bom):
  tmp = tmp_path_factory.mktemp("t")
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["user", "item", "ts"])
  writer.writerows(rows)
  (tmp / "c.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode())
  pq.write_table(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows],
                           "ts": [r[2] for r in rows]}), tmp / "p.parquet")
  expect = reference(rows)
  for path in (tmp / "c.csv", tmp / "p.parquet"):
    log = click_log.read_click_log(str(path), time_col="ts")
    assert as_dict(log) == expect
    ids = sorted({r[1].strip() for r in rows})
    numeric = all(i.isdigit() and (i == "0" or not i.startswith("0")) for i in ids)
    assert list(log.item_ids[1:]) == (sorted(ids, key=int) if numeric else sorted(ids, key=str.encode))


def test_parquet_directory_with_integer_ids_and_timestamps(tmp_path):
  (tmp_path / "d").mkdir()
  table = pa.table({"uid": pa.array([5, 5, 7, 7, 5], pa.int64()), "iid": pa.array([30, 10, 10, 20, 20], pa.int32()),
                    "at": pa.array(np.array([3, 1, 2, 1, 2], "datetime64[s]"))})
  pq.write_table(table.slice(0, 3), tmp_path / "d" / "part-0.parquet")
  pq.write_table(table.slice(3), tmp_path / "d" / "part-1.parquet")
  log = click_log.read_click_log(str(tmp_path / "d"), user_col="uid", item_col="iid", time_col="at")
  assert as_dict(log) == {"5": ["10", "20", "30"], "7": ["20", "10"]}
  assert list(log.item_ids) == ["", "10", "20", "30"] and log.times is not None


@pytest.mark.parametrize("make, message", [
    (lambda d: pq.write_table(pa.table({"user": ["u"], "product": ["a"]}), d / "x.parquet"),
     "x.parquet: no column 'item' (--item_col) among user, product"),
    (lambda d: pq.write_table(pa.table({"user": ["u", None, "v"], "item": ["a", "b", "c"]}), d / "x.parquet"),
     "x.parquet: row 2: empty user id, a null"),
    (lambda d: pq.write_table(pa.table({"user": ["u", " "], "item": ["a", "b"]}), d / "x.parquet"),
     "x.parquet: row 2: empty user id, a null"),
    (lambda d: (d / "x.parquet").write_bytes(b"PAR1 not really"), "x.parquet: not a readable Parquet file"),
])
def test_parquet_errors_name_the_file_and_row(tmp_path, make, message):
  make(tmp_path)
  with pytest.raises(InputError, match=None) as e:
    click_log.read_click_log(str(tmp_path / "x.parquet"))
  assert str(e.value).startswith(str(tmp_path / message.split(":")[0])) and message in str(e.value)


@pytest.mark.parametrize("data_format, text", [
    ("sequences", "u1 a b c\nu2 b c\n"), ("pairs", "u1 a\nu1 b\nu2 c\n"), ("note", "u1:[a,b]\nu2:[c]\n"),
    ("csv", "user,item\nu1,a\nu2,b\n")])
def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path, data_format, text):
  path = tmp_path / "log"
  path.write_bytes(b"\xef\xbb\xbf" + text.encode())
  assert "u1" in as_dict(click_log.read_click_log(str(path), data_format))


def run(*args, module):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e  # starts jaxrec processes
def test_recall_parquet_output_matches_the_tsv(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"user_ids": np.array([f"u{i}" for i in range(300)]), "user_emb": rng.standard_normal((300, 8), np.float32),
            "item_ids": np.array([f"i{i}" for i in range(40)]), "item_emb": rng.standard_normal((40, 8), np.float32),
            "visited_indptr": np.arange(0, 301) * 3, "visited_indices": rng.integers(0, 40, 900)}
  np.savez(tmp_path / "e.npz", **arrays)
  for out in ("r.tsv", "r.parquet"):
    result = run(f"--embeddings={tmp_path}/e.npz", f"--output={tmp_path}/{out}", "--top_n=38", "--with_scores",
                 module="jaxrec.recall")
    assert result.returncode == 0, result.stderr
  table = pq.read_table(tmp_path / "r.parquet")
  assert table.column_names == ["user", "items", "scores"]
  tsv = [line.rstrip("\n").split("\t") for line in open(tmp_path / "r.tsv")]
  assert table.column("user").to_pylist() == [u for u, _ in tsv]
  for (_, cells), items, scores in zip(tsv, table.column("items").to_pylist(), table.column("scores").to_pylist()):
    pairs = [c.split(":") for c in cells.split(",") if c]
    assert items == [p[0] for p in pairs]  # short lists where 38 > unvisited: -1 left out
    np.testing.assert_allclose(scores, [float(p[1]) for p in pairs], rtol=1e-6)


@pytest.mark.e2e  # starts jaxrec processes
def test_inspect_reports_the_log(tmp_path):
  log = click_log.synthetic_click_log(500, 60, seed=3)
  with open(tmp_path / "s.txt", "w") as f:
    for u in range(log.num_users):
      f.write(" ".join([log.user_ids[u], *log.item_ids[log.items[log.indptr[u]:log.indptr[u + 1]]]]) + "\n")
  result = run(f"--data_path={tmp_path}/s.txt", "--mode=inspect", "--seq_length=10", module="jaxrec.main")
  assert result.returncode == 0, result.stderr
  lengths = log.lengths()
  clicked = len(np.unique(log.items))
  assert f"500 users, {clicked} items, {len(log.items):,} clicks" in result.stdout
  padding = 1 - np.minimum(lengths, 10).sum() / (500 * 10)
  assert f"{padding:.1%} of the slots are padding" in result.stdout
  assert f"max {lengths.max()}" in result.stdout and "peak RSS" in result.stdout
  assert not os.path.exists(tmp_path / "runs")


@settings(deadline=None, max_examples=80)
@given(st.lists(st.tuples(st.sampled_from(["u1", "u2", "10", "9"]), st.sampled_from(["a", "b", "7", "07"]),
                          st.integers(0, 3)), min_size=1, max_size=30),
       st.sampled_from([" ", "\t", ",", "  ", " \t", ", "]), st.booleans(), st.booleans())
def test_pairs_read_as_whitespace_split_lines(tmp_path_factory, rows, separator, with_time, trailing_space):
  """Arrow reads the simple files; anything else falls back to the line reader; both as the reference."""
  lines = [separator.join([u, i] + ([str(t)] if with_time else [])) + (" " if trailing_space else "")
           for u, i, t in rows]
  path = tmp_path_factory.mktemp("p") / "pairs.txt"
  path.write_text("\n".join(lines) + "\n")
  expect = reference([(u, i, t if with_time else 0) for u, i, t in rows])
  assert as_dict(click_log.read_click_log(str(path), "pairs")) == expect
