"""Click-log readers, leave-one-out split and batches against plain-Python references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import data
from jaxrec.errors import InputError

SEQUENCES = {"alice": ["a", "b", "c", "d"], "bob": ["c", "a"], "carol": ["x", "b", "x", "a", "e"]}


def write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def as_dict(log: data.ClickLog) -> dict:
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
    log = data.read_click_log(path, data_format, user_col="user", item_col="item",
                              time_col="ts" if kind == "csv" else "")
    assert as_dict(log) == SEQUENCES
    assert log.item_ids[0] == "" and log.items.min() >= 1
    assert sorted(log.item_ids[1:]) == sorted({i for s in SEQUENCES.values() for i in s})


def test_large_integer_ids_and_leading_zeros_stay_distinct(tmp_path):
  path = write(tmp_path, "s.txt", "1 007 7 12345678901234\n2 7 07\n")
  log = data.read_click_log(path, "sequences")
  assert as_dict(log) == {"1": ["007", "7", "12345678901234"], "2": ["7", "07"]}


def test_unicode_ids(tmp_path):
  path = write(tmp_path, "s.txt", "用户1 商品a 商品b\nü x 商品a\n")
  assert as_dict(data.read_click_log(path, "sequences")) == {"用户1": ["商品a", "商品b"], "ü": ["x", "商品a"]}


def test_shared_benchmark_file_if_present():
  path = "../shared/data/beauty_s3rec.txt"
  try:
    log = data.read_click_log(path)
  except InputError:
    pytest.skip("shared data not present")
  assert (log.num_users, log.num_items - 1, len(log.items)) == (22363, 12101, 198502)


def test_leave_one_out():
  log = data.synthetic_click_log(200, 50, seed=1)
  split = data.leave_one_out(log)
  for u in range(log.num_users):
    clicks = log.items[log.indptr[u]:log.indptr[u + 1]]
    train = log.items[log.indptr[u]:split.train_end[u]]
    if len(clicks) >= 3:
      np.testing.assert_array_equal(train, clicks[:-2])
    else:
      np.testing.assert_array_equal(train, clicks)
  for which, back in (("valid", 2), ("test", 1)):
    ends, targets = split.eval_inputs(which)
    for u, end, target in zip(split.eval_users, ends, targets):
      assert end == log.indptr[u + 1] - back and target == log.items[end]
  counts = split.item_counts()
  naive = np.zeros(log.num_items, int)
  for u in range(log.num_users):
    for item in log.items[log.indptr[u]:split.train_end[u]]:
      naive[item] += 1
  np.testing.assert_array_equal(counts, naive)


def test_train_batch_matches_a_naive_construction():
  log = data.synthetic_click_log(100, 30, seed=2, mean_length=6)
  split = data.leave_one_out(log)
  sampler = data.PopularitySampler(split.item_counts())
  users = split.train_users[:7]
  length, rows = 5, 9
  batch = data.train_batch(split, sampler, users, rows, length, seed=3, epoch=1, step=4)
  assert batch["input_ids"].shape == batch["label"].shape == batch["hot_weight"].shape == (rows, length)
  counts = split.item_counts()
  for r in range(rows):
    if r >= len(users):
      assert batch["row_mask"][r] == 0 and not batch["input_ids"][r].any()
      continue
    assert batch["row_mask"][r] == 1
    train = list(log.items[log.indptr[users[r]]:split.train_end[users[r]]])
    inputs, labels = train[:-1][-length:], train[1:][-length:]
    pad = length - len(inputs)
    assert list(batch["input_ids"][r]) == [0] * pad + inputs
    assert list(batch["label"][r][pad:]) == labels
  assert (batch["label"] > 0).all()  # padded label slots hold sampled items, never padding
  np.testing.assert_allclose(batch["hot_weight"], np.log(counts[batch["label"]] / counts.sum()), rtol=1e-6)
  again = data.train_batch(split, sampler, users, rows, length, seed=3, epoch=1, step=4)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])


def test_negatives_follow_popularity():
  counts = np.array([0, 1, 3, 6])
  sampler = data.PopularitySampler(counts)
  draws = sampler.sample(np.random.default_rng(0), (60000,))
  np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), counts / 10, atol=0.01)


@settings(deadline=None, max_examples=50)
@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=300), st.integers(0, 2**32 - 1))
def test_guided_sampling_equals_a_plain_cdf_search(counts, seed):
  """The guide-table search returns exactly what searchsorted over the whole CDF returns."""
  counts = np.array([0] + counts)
  if counts.sum() == 0:
    counts[-1] = 1
  sampler = data.PopularitySampler(counts)
  u = np.random.default_rng(seed).random((7, 50))
  want = np.minimum(np.searchsorted(sampler.cdf, u, side="right"), len(counts) - 1)
  got = sampler.sample(np.random.default_rng(seed), (7, 50))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert counts[got].min() > 0  # never an item nobody clicked


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  a = data.epoch_order(50, 1, 3)
  np.testing.assert_array_equal(a, data.epoch_order(50, 1, 3))
  assert sorted(a) == list(range(50))
  assert not np.array_equal(a, data.epoch_order(50, 1, 4))


def test_synthetic_log_is_deterministic_and_learnable():
  a, b = data.synthetic_click_log(300, 80, seed=5), data.synthetic_click_log(300, 80, seed=5)
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


def test_left_padded_keeps_the_most_recent_items():
  items = np.arange(1, 11, dtype=np.int32)
  out = data.left_padded(items, np.array([0, 2, 9]), np.array([10, 4, 9]), 4)
  np.testing.assert_array_equal(out, [[7, 8, 9, 10], [0, 0, 3, 4], [0, 0, 0, 0]])


@settings(deadline=None, max_examples=50)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 4]), st.integers(1, 40))
def test_real_slots_list_each_groups_real_slots(seed, groups, length):
  rng = np.random.default_rng(seed)
  rows = 4 * int(rng.integers(1, 5))
  ids = rng.integers(1, 9, (rows, length)) * (rng.random((rows, length)) < rng.random())
  row_mask = (rng.random(rows) < 0.8).astype(np.float32)
  slots = data.real_slots({"input_ids": ids, "row_mask": row_mask}, groups)
  per_group = rows // groups
  counts = []
  for g in range(groups):
    want = [(r - g * per_group) * length + l for r in range(g * per_group, (g + 1) * per_group)
            for l in range(length) if ids[r, l] != 0 and row_mask[r]]
    counts.append(len(want))
    assert slots[g, :len(want)].tolist() == want
    assert (slots[g, len(want):] == -1).all()
  most = max(counts)
  assert slots.shape[1] % 128 == 0 and most <= slots.shape[1] <= max(128, most + most // 8 + 127)


def test_slot_capacity_wastes_at_most_an_eighth():
  for n in range(1, 70000):
    c = data.slot_capacity(n)
    assert c >= n and c % 128 == 0 and (c <= n * 9 / 8 if n >= 1024 else c - n < 128)
