"""Evaluation and the time split against plain references written from their definitions.

- evaluate.evaluate (full ranking over every item but padding and the user's clicks before
  the target, HR@K / NDCG@K / MRR) against a float64 brute force: score every item, drop
  the visited ones, count the candidates scoring at least the target's (ties count against
  it, as metrics.target_ranks documents), textbook formulas.
- holdout.time_split against a per-user Python loop over the timestamps.

Shape key: U users, I items (row 0 is padding), D embedding size, L sequence length.
"""

import math
from unittest import mock

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import evaluate
from jaxrec import holdout
from jaxrec.clicks import ClickLog
from jaxrec.errors import InputError
from jaxrec.model import ModelConfig, Seq2Seq, init_params

ITEMS, DIM = 30, 4
KS = (1, 3, 10)  # all below ITEMS (see test_a_target_clicked_before_adds_nothing_to_mrr)


def make_log(sequences, times=None) -> ClickLog:
  """A ClickLog of item-id lists (ids 1..ITEMS-1), with per-click times if given."""
  indptr = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
  items = np.array([i for s in sequences for i in s], np.int32)
  flat_times = None if times is None else np.array([t for ts in times for t in ts], np.float64)
  return ClickLog(np.array([f"u{u}" for u in range(len(sequences))]),
                  np.array([""] + [f"i{i}" for i in range(1, ITEMS)]), indptr, items, flat_times)


# ----------------------------------------------------------------------------- evaluation


def user_vector(u, end):
  """The stand-in encoder: a small-integer vector per (user, input end), exact in float32."""
  return np.random.default_rng([u, end]).integers(-2, 3, DIM).astype(np.float32)


def brute_force_ranks(log, users, ends, item_emb_IxD, vectors) -> list:
  """0-based rank of each target by scoring every item in float64, one user at a time.

  Candidates: items 1..I-1 the user did not click before the target; the rank is the
  number of other candidates scoring at least the target's. A target clicked before is
  no candidate (recall never returns it): rank inf, a miss.
  """
  item_emb = np.asarray(item_emb_IxD, np.float64)
  ranks = []
  for u, end in zip(users, ends):
    target = int(log.items[end])
    visited = set(log.items[log.indptr[u]:end].tolist())
    scores = item_emb @ np.asarray(vectors(u, end), np.float64)
    if target in visited:
      ranks.append(math.inf)
      continue
    ranks.append(sum(1 for j in range(1, len(item_emb))
                     if j not in visited and j != target and scores[j] >= scores[target]))
  return ranks


def textbook_metrics(ranks, ks) -> dict:
  """HR@K, NDCG@K (one relevant item: 1 / log2(rank + 2) within K) and MRR, user by user."""
  out = {"count": len(ranks), "mrr": sum(1.0 / (r + 1) for r in ranks) / len(ranks)}
  for k in ks:
    out[f"hr@{k}"] = sum(1.0 for r in ranks if r < k) / len(ranks)
    out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
  return out


def brute_force_metrics(log, users, ends, item_emb_IxD, vectors, ks) -> dict:
  return textbook_metrics(brute_force_ranks(log, users, ends, item_emb_IxD, vectors), ks)


def library_metrics(split, which, item_emb_IxD, vectors, ks):
  """evaluate.evaluate with the encoder and the item table replaced by the given ones."""
  fake_user_vectors = lambda params, config, log, users, ends, batch_size: np.stack(
      [vectors(u, e) for u, e in zip(users, ends)])
  with mock.patch.object(evaluate, "user_vectors", fake_user_vectors), \
       mock.patch.object(evaluate, "item_table", lambda params, config: item_emb_IxD):
    return evaluate.evaluate(None, None, split, which, ks)


def assert_metrics_equal(got, want):
  assert got.keys() == want.keys()
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def sequences_without_repeat_targets(rng, num_users, max_length):
  """Click lists with repeats in the history, but neither leave-one-out target among the
  clicks before it."""
  out = []
  for _ in range(num_users):
    history = rng.integers(1, ITEMS, rng.integers(1, max_length - 1)).tolist()
    valid, test = rng.choice(np.setdiff1d(np.arange(1, ITEMS), history), 2, replace=False)
    out.append(history + [int(valid), int(test)])
  return out


@settings(deadline=None, max_examples=25, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 12, 26]))
def test_evaluate_matches_float64_brute_force(seed, max_length):
  rng = np.random.default_rng(seed)
  log = make_log(sequences_without_repeat_targets(rng, 9, max_length))
  item_emb_IxD = rng.integers(-2, 3, (ITEMS, DIM)).astype(np.float32)  # many exact ties
  item_emb_IxD[0] = 9.0  # padding: would outscore everything if it were a candidate
  split = holdout.leave_one_out(log)
  for which in ("valid", "test"):
    users, ends, _ = split.eval_inputs(which)
    got = library_metrics(split, which, item_emb_IxD, user_vector, KS)
    assert_metrics_equal(got, brute_force_metrics(log, users, ends, item_emb_IxD, user_vector, KS))


def test_evaluate_edge_cases_match_float64_brute_force():
  """Target first only once the history is excluded, target last of all, a history of most
  of the catalog, a target tied with another item; real-valued vectors."""
  rng = np.random.default_rng(0)
  # Every user vector is a positive multiple of e0, so items rank by their x0: distinct by
  # 1/7 (far from float32 rounding) but for one exact tie.
  item_emb_IxD = rng.normal(size=(ITEMS, DIM)).astype(np.float32)
  item_emb_IxD[:, 0] = rng.permutation(ITEMS) / 7.0 + 1.0
  item_emb_IxD[0, 0] = 100.0  # padding: would rank first if it were a candidate
  b = [int(i) for i in np.argsort(-item_emb_IxD[1:, 0]) + 1]  # items best first
  item_emb_IxD[b[1], 0] = item_emb_IxD[b[2], 0]
  most = [i for i in range(1, ITEMS) if i not in (b[5], b[6])]
  log = make_log([
      [b[0], b[1], b[2], b[4], b[3]],  # valid rank 1; test first once b0..b2 are excluded
      [b[1], b[2], b[3], b[-1], b[0]],  # valid target last of all 26 candidates
      most + most[:5] + [b[6], b[5]],  # 27 distinct items clicked, some twice: 2 candidates left
      [b[0], b[8], b[1], b[2]],  # valid target b1 tied with b2: the tie counts against it
  ])
  split = holdout.leave_one_out(log)
  vectors = lambda u, end: np.array([0.5 + u + end % 3, 0, 0, 0], np.float32)
  ks = (1, 2, 10, 20, 25, 26)
  expected_ranks = {"valid": [1, 25, 1, 1], "test": [0, 0, 0, 0]}
  for which in ("valid", "test"):
    users, ends, _ = split.eval_inputs(which)
    ranks = brute_force_ranks(log, users, ends, item_emb_IxD, vectors)
    assert ranks == expected_ranks[which]  # the cases are what they claim
    assert_metrics_equal(library_metrics(split, which, item_emb_IxD, vectors, ks), textbook_metrics(ranks, ks))


def unit_items(seed):
  """[I, D] unit vectors: item t's own vector scores it above every other item."""
  item_emb_IxD = np.random.default_rng(seed).normal(size=(ITEMS, DIM))
  return (item_emb_IxD / np.linalg.norm(item_emb_IxD, axis=1, keepdims=True)).astype(np.float32)


def test_a_target_clicked_before_is_a_miss():
  # The user vector is the target's own: every target would rank first. Users 0-2 clicked
  # both targets earlier, user 3 neither.
  log = make_log([[3, 5, 7, 3, 5], [9, 2, 9, 2], [4, 4, 4], [1, 6, 2, 8, 3]])
  split = holdout.leave_one_out(log)
  item_emb_IxD = unit_items(1)
  vectors = lambda u, end: item_emb_IxD[log.items[end]]
  for which in ("valid", "test"):
    got = library_metrics(split, which, item_emb_IxD, vectors, KS)
    want = brute_force_metrics(log, *split.eval_inputs(which)[:2], item_emb_IxD, vectors, KS)
    assert want["hr@1"] == want["hr@10"] == 0.25
    for k in KS:
      assert got[f"hr@{k}"] == want[f"hr@{k}"] and got[f"ndcg@{k}"] == want[f"ndcg@{k}"]


def test_a_target_clicked_before_adds_nothing_to_mrr():
  # It was ranked num_items: 1 / (num_items + 1) of MRR, and a hit for K > num_items.
  log = make_log([[3, 5, 7, 3, 5], [9, 2, 9, 2]])
  split = holdout.leave_one_out(log)
  item_emb_IxD = unit_items(1)
  vectors = lambda u, end: item_emb_IxD[log.items[end]]
  got = library_metrics(split, "test", item_emb_IxD, vectors, (ITEMS + 5,))
  assert got["mrr"] == 0.0 and got[f"hr@{ITEMS + 5}"] == 0.0


def test_user_vectors_encode_the_last_clicks_before_each_target():
  """evaluate.user_vectors (blocks of similar length, each at its shortest padded length)
  against the model run on one user at a time at full length."""
  config = ModelConfig(num_items=ITEMS, seq_length=6, hidden_size=8, num_attention_heads=2,
                       num_hidden_layers=1)
  params = jax.jit(lambda key: init_params(config, key))(jax.random.key(0))
  rng = np.random.default_rng(2)
  log = make_log([rng.integers(1, ITEMS, n).tolist() for n in (3, 4, 5, 9, 15, 3, 7, 12, 6)])
  split = holdout.leave_one_out(log)
  one_user = jax.jit(lambda ids: Seq2Seq(config).apply({"params": params}, ids, method=Seq2Seq.user_vectors))
  for which in ("valid", "test"):
    users, ends, _ = split.eval_inputs(which)
    got = evaluate.user_vectors(params, config, log, users, ends, batch_size=4)
    for row, (u, end) in enumerate(zip(users, ends)):
      clicks = log.items[log.indptr[u]:end][-config.seq_length:]
      ids_1xL = np.zeros((1, config.seq_length), np.int32)
      ids_1xL[0, config.seq_length - len(clicks):] = clicks
      np.testing.assert_allclose(got[row], np.asarray(one_user(ids_1xL))[0], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{which} user {u}")


# ----------------------------------------------------------------------------- time split


def naive_time_split(log, valid_from, test_from):
  """({user: train clicks}, {user: valid target index}, {user: test target index}, counts [I])."""
  train, valid, test = {}, {}, {}
  counts = np.zeros(log.num_items, np.int64)
  for u in range(log.num_users):
    start, end = int(log.indptr[u]), int(log.indptr[u + 1])
    clicks = range(start, end)
    train[u] = [i for i in clicks if log.times[i] < valid_from]
    for i in train[u]:
      counts[log.items[i]] += 1
    in_valid = [i for i in clicks if valid_from <= log.times[i] < test_from]
    if in_valid and in_valid[0] > start:  # a target needs an earlier click as input
      valid[u] = in_valid[0]
    in_test = [i for i in clicks if log.times[i] >= test_from]
    if in_test and in_test[0] > start:
      test[u] = in_test[0]
  return train, valid, test, counts


def check_time_split(log, valid_from, test_from):
  train, valid, test, counts = naive_time_split(log, valid_from, test_from)
  if not valid or not test:
    with pytest.raises(InputError, match="time split"):
      holdout.time_split(log, valid_from, test_from)
    return
  split = holdout.time_split(log, valid_from, test_from)
  for u in range(log.num_users):
    start = log.indptr[u]
    assert list(range(start, split.train_end[u])) == train[u], u
    assert np.all(log.times[start:split.train_end[u]] < valid_from)  # nothing at or after valid_from
  for which, want in (("valid", valid), ("test", test)):
    users, ends, targets = split.eval_inputs(which)
    assert dict(zip(users.tolist(), ends.tolist())) == want, which
    np.testing.assert_array_equal(targets, log.items[ends])
    # The input is every click of the user before the target (all strictly earlier in the log).
    assert np.all(ends > log.indptr[users]) and np.all(ends < log.indptr[users + 1])
  for end in valid.values():
    assert valid_from <= log.times[end] < test_from
  for u, end in test.items():
    assert log.times[end] >= test_from and np.all(log.times[log.indptr[u]:end] < test_from)
  np.testing.assert_array_equal(split.item_counts(), counts)
  np.testing.assert_array_equal(split.train_users, [u for u in train if len(train[u]) >= 2])


@st.composite
def timed_logs(draw):
  """Logs on a coarse time grid (ties within users and at the boundaries), boundaries on it
  too: users with every click before, between or after the boundaries occur."""
  num_users = draw(st.integers(1, 10))
  times = [sorted(draw(st.lists(st.integers(0, 9), min_size=1, max_size=9))) for _ in range(num_users)]
  sequences = [[draw(st.integers(1, ITEMS - 1)) for _ in ts] for ts in times]
  valid_from = draw(st.integers(1, 7))
  test_from = valid_from + draw(st.integers(0, 3))  # 0: nothing validates (an InputError)
  return make_log(sequences, times), float(valid_from), float(test_from)


@settings(deadline=None, max_examples=300, derandomize=True)
@given(timed_logs())
def test_time_split_matches_per_user_loop(case):
  check_time_split(*case)


def test_time_split_boundary_ties_and_one_sided_users():
  times = [
      [1, 2, 5, 5, 5, 8, 8],  # ties at valid_from = 5 and test_from = 8
      [1, 1, 2, 3],  # every click before valid_from: trains only
      [8, 9, 9],  # every click from test_from on: no earlier click, never a target
      [5, 5, 6],  # from valid_from on: its first validation click has no input, so no target
      [4.999, 5, 7.999, 8],  # just before each boundary
      [6, 9],  # validation click only as input to the test target
  ]
  sequences = [[(7 * u + j) % (ITEMS - 1) + 1 for j in range(len(ts))] for u, ts in enumerate(times)]
  log = make_log(sequences, times)
  check_time_split(log, 5.0, 8.0)
  split = holdout.time_split(log, 5.0, 8.0)
  assert split.valid_users.tolist() == [0, 4] and split.valid_ends.tolist() == [2, 18]
  assert split.test_users.tolist() == [0, 4, 5] and split.test_ends.tolist() == [5, 20, 22]
  assert split.train_end.tolist() == [2, 11, 11, 14, 18, 21]
