"""Click-log readers, the synthetic log and the leave-one-out split against plain-Python references."""

import os

import numpy as np
import pytest

from jaxrec import click_log
from jaxrec import clicks
from jaxrec import holdout

# The shared benchmark data sits beside the checkout (../shared/data), where there is one.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARK = os.path.join(REPO, os.pardir, "shared", "data", "beauty_s3rec.txt")
SEQUENCES = {"alice": ["a", "b", "c", "d"], "bob": ["c", "a"], "carol": ["x", "b", "x", "a", "e"]}


def write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def as_dict(log: clicks.ClickLog) -> dict:
  """{raw user: [raw items in order]}: what any reader must produce, whatever the dense ids."""
  return {str(log.user_ids[u]): [str(log.item_ids[i]) for i in log.items[log.indptr[u]:log.indptr[u + 1]]]
          for u in range(log.num_users)}


def all_formats(tmp_path):
  note = "\n".join(f"{u}:[{','.join(s)}]" for u, s in SEQUENCES.items())
  seqs = "\n".join(f"{u} {' '.join(s)}" for u, s in SEQUENCES.items())
  # Pairs interleaved across users, with timestamps out of file order.
  clicks = [(u, item, t) for u, s in SEQUENCES.items() for t, item in enumerate(s)]
  shuffled = [clicks[i] for i in np.random.default_rng(0).permutation(len(clicks))]
  pairs_time = "\n".join(f"{u}\t{i}\t{t * 10}" for u, i, t in shuffled)
  pairs_order = "\n".join(f"{u},{i}" for u, i, _ in clicks)
  csv_text = "ts,item,user\n" + "\n".join(f"{t},{i},{u}" for u, i, t in shuffled)
  return {
      "note": write(tmp_path, "n.txt", note + "\n"),
      "sequences": write(tmp_path, "s.txt", "\n" + seqs + "\n\n"),
      "pairs_time": write(tmp_path, "p.txt", pairs_time),
      "pairs_order": write(tmp_path, "po.txt", pairs_order),
      "csv": write(tmp_path, "c.csv", csv_text),
  }


@pytest.mark.parametrize("kind", ["note", "sequences", "pairs_time", "pairs_order", "csv"])
def test_every_format_reads_the_same_sequences(tmp_path, kind):
  path = all_formats(tmp_path)[kind]
  fmt = {"pairs_time": "pairs", "pairs_order": "pairs"}.get(kind, kind)
  for data_format in ("auto", fmt):
    log = click_log.read_click_log(path, data_format, user_col="user", item_col="item",
                              time_col="ts" if kind == "csv" else "")
    assert as_dict(log) == SEQUENCES
    assert log.item_ids[0] == "" and log.items.min() >= 1
    assert sorted(log.item_ids[1:]) == sorted({i for s in SEQUENCES.values() for i in s})


def test_large_integer_ids_and_leading_zeros_stay_distinct(tmp_path):
  path = write(tmp_path, "s.txt", "1 007 7 12345678901234\n2 7 07\n")
  log = click_log.read_click_log(path, "sequences")
  assert as_dict(log) == {"1": ["007", "7", "12345678901234"], "2": ["7", "07"]}


def test_unicode_ids(tmp_path):
  path = write(tmp_path, "s.txt", "用户1 商品a 商品b\nü x 商品a\n")
  assert as_dict(click_log.read_click_log(path, "sequences")) == {"用户1": ["商品a", "商品b"], "ü": ["x", "商品a"]}


def test_shared_benchmark_file_if_present():
  # Only a missing file skips: a reader that fails on it is a failure.
  if not os.path.exists(BENCHMARK):
    pytest.skip(f"{BENCHMARK} not present")
  log = click_log.read_click_log(BENCHMARK)
  assert (log.num_users, log.num_items - 1, len(log.items)) == (22363, 12101, 198502)


def test_leave_one_out():
  log = click_log.synthetic_click_log(200, 50, seed=1)
  split = holdout.leave_one_out(log)
  for u in range(log.num_users):
    clicks = log.items[log.indptr[u]:log.indptr[u + 1]]
    train = log.items[log.indptr[u]:split.train_end[u]]
    if len(clicks) >= 3:
      np.testing.assert_array_equal(train, clicks[:-2])
    else:
      np.testing.assert_array_equal(train, clicks)
  for which, back in (("valid", 2), ("test", 1)):
    users, ends, targets = split.eval_inputs(which)
    for u, end, target in zip(users, ends, targets):
      assert end == log.indptr[u + 1] - back and target == log.items[end]
  counts = split.item_counts()
  naive = np.zeros(log.num_items, int)
  for u in range(log.num_users):
    for item in log.items[log.indptr[u]:split.train_end[u]]:
      naive[item] += 1
  np.testing.assert_array_equal(counts, naive)


def test_synthetic_log_is_deterministic_and_learnable():
  a, b = click_log.synthetic_click_log(300, 80, seed=5), click_log.synthetic_click_log(300, 80, seed=5)
  np.testing.assert_array_equal(a.items, b.items)
  assert a.lengths().min() >= 3
  # Sequential structure: the most frequent successor of an item is far above chance.
  pairs = {}
  for u in range(a.num_users):
    s = a.items[a.indptr[u]:a.indptr[u + 1]]
    for x, y in zip(s[:-1], s[1:]):
      pairs.setdefault(x, []).append(y)
  top_share = np.mean([np.max(np.bincount(v)) / len(v) for v in pairs.values() if len(v) >= 10])
  assert top_share > 0.2
