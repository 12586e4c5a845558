"""Tests for jaxrec.metrics against a naive float64 per-user reference.

Shape key: U users, I items (row 0 is padding), D embedding size, H history slots.
"""

import logging
import math
import warnings

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import metrics

jax.config.update("jax_numpy_rank_promotion", "raise")

# A few fixed sizes keep the number of compiled shapes small.
USERS = (1, 6, 9)  # block 4: smaller than, not a multiple of, one block
ITEMS = (3, 10, 13)
ITEM_BLOCKS = (4, 64)  # 13 % 4 != 0; 64 > I is one block
HISTORY = (0, 5)
DIM = 3
USER_BLOCK = 4
KS = (1, 3, 10)


def naive_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH):
  """Rank per user from float64 scores and an explicit candidate set."""
  scores_UxI = user_emb_UxD.astype(np.float64) @ item_emb_IxD.astype(np.float64).T
  num_items = item_emb_IxD.shape[0]
  ranks = []
  for u, target in enumerate(target_U):
    candidates = (set(range(1, num_items)) - set(history_UxH[u].tolist())) | {int(target)}
    target_score = scores_UxI[u, target]
    ranks.append(sum(1 for j in candidates
                     if j != target and scores_UxI[u, j] >= target_score))
  return np.array(ranks, dtype=np.int64)


def naive_metrics(rank_U, ks):
  """HR@K, NDCG@K, MRR written out one user at a time."""
  out = {"count": len(rank_U), "mrr": 0.0}
  for k in ks:
    out[f"hr@{k}"] = out[f"ndcg@{k}"] = 0.0
  for rank in rank_U:
    out["mrr"] += 1.0 / (rank + 1) / len(rank_U)
    for k in ks:
      if rank < k:
        out[f"hr@{k}"] += 1.0 / len(rank_U)
        out[f"ndcg@{k}"] += 1.0 / math.log2(rank + 2) / len(rank_U)
  return out


def num_candidates(num_items, target_U, history_UxH):
  return np.array([len((set(range(1, num_items)) - set(h.tolist())) | {int(t)})
                   for t, h in zip(target_U, history_UxH)])


@st.composite
def eval_sets(draw, integer_embeddings=True):
  """Embeddings, targets and 0-padded histories with repeats and targets in them."""
  num_users = draw(st.sampled_from(USERS))
  num_items = draw(st.sampled_from(ITEMS))
  width = draw(st.sampled_from(HISTORY))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  if integer_embeddings:  # small integers: exact float32 scores, many exact ties
    user_emb_UxD = rng.integers(-2, 3, (num_users, DIM)).astype(np.float32)
    item_emb_IxD = rng.integers(-2, 3, (num_items, DIM)).astype(np.float32)
  else:
    user_emb_UxD = rng.normal(size=(num_users, DIM)).astype(np.float32)
    item_emb_IxD = rng.normal(size=(num_items, DIM)).astype(np.float32)
  target_U = rng.integers(1, num_items, num_users).astype(np.int32)
  # Ids 0..I-1 with replacement: padding, repeats and the target all occur.
  history_UxH = rng.integers(0, num_items, (num_users, width)).astype(np.int32)
  if width:
    has_target_U = rng.random(num_users) < 0.5
    history_UxH[has_target_U, -1] = target_U[has_target_U]
    history_UxH[rng.random(num_users) < 0.2] = 0  # empty histories
  item_block = draw(st.sampled_from(ITEM_BLOCKS))
  return user_emb_UxD, item_emb_IxD, target_U, history_UxH, item_block


@settings(deadline=None, max_examples=20)
@given(eval_sets())
def test_ranks_and_metrics_match_naive_reference(case):
  user_emb_UxD, item_emb_IxD, target_U, history_UxH, item_block = case
  rank_U = metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH,
                                  block_size=USER_BLOCK, item_block=item_block)
  expected_U = naive_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH)
  assert rank_U.dtype == np.int32 and rank_U.shape == target_U.shape
  np.testing.assert_array_equal(rank_U, expected_U)
  got, want = metrics.ranking_metrics(rank_U, KS), naive_metrics(expected_U, KS)
  assert got.keys() == want.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], rel=1e-12), key


@settings(deadline=None, max_examples=15)
@given(eval_sets(integer_embeddings=False))
def test_real_valued_ranks_match_up_to_rounding(case):
  user_emb_UxD, item_emb_IxD, target_U, history_UxH, item_block = case
  rank_U = metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH,
                                  block_size=USER_BLOCK, item_block=item_block)
  # float32 scores may flip a float64 comparison only within rounding distance.
  shift = 1e-4
  low_U = naive_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH)
  scores_UxI = user_emb_UxD.astype(np.float64) @ item_emb_IxD.astype(np.float64).T
  target_score_U = scores_UxI[np.arange(len(target_U)), target_U]
  near_U = np.sum(np.abs(scores_UxI - target_score_U[:, None]) < shift, axis=1)
  assert np.all(rank_U >= low_U - near_U) and np.all(rank_U <= low_U + near_U)
  np.testing.assert_array_equal(rank_U[near_U == 1], low_U[near_U == 1])


@pytest.mark.parametrize("item_block", [4, 64])
def test_constant_model_ranks_target_last(item_block):
  # Equal, non-integer item vectors: the target's score must tie bit-for-bit
  # with every other item's, or a collapsed model would look perfect.
  rng = np.random.default_rng(0)
  num_users, num_items = 9, 13
  user_emb_UxD = rng.normal(size=(num_users, DIM)).astype(np.float32)
  item_emb_IxD = np.tile(rng.normal(size=(1, DIM)).astype(np.float32), (num_items, 1))
  target_U = rng.integers(1, num_items, num_users).astype(np.int32)
  history_UxH = rng.integers(0, num_items, (num_users, 5)).astype(np.int32)
  rank_U = metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH,
                                  block_size=USER_BLOCK, item_block=item_block)
  np.testing.assert_array_equal(
      rank_U, num_candidates(num_items, target_U, history_UxH) - 1)
  zero_rank_U = metrics.evaluate_ranks(np.zeros_like(user_emb_UxD), item_emb_IxD,
                                       target_U, np.zeros((num_users, 0), np.int32),
                                       block_size=USER_BLOCK, item_block=item_block)
  np.testing.assert_array_equal(zero_rank_U, num_items - 2)
  assert metrics.ranking_metrics(zero_rank_U, (1, 10))["hr@10"] == 0.0


def test_ranks_do_not_depend_on_blocking():
  rng = np.random.default_rng(1)
  user_emb_UxD = rng.integers(-2, 3, (6, DIM)).astype(np.float32)
  item_emb_IxD = rng.integers(-2, 3, (13, DIM)).astype(np.float32)
  target_U = rng.integers(1, 13, 6).astype(np.int32)
  history_UxH = rng.integers(0, 13, (6, 5)).astype(np.int32)
  expected_U = naive_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH)
  for block_size, item_block in [(1, 1), (6, 5), (4, 13), (16, 100)]:
    rank_U = metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH,
                                    block_size=block_size, item_block=item_block)
    np.testing.assert_array_equal(rank_U, expected_U, err_msg=f"{block_size=} {item_block=}")


def test_target_ranks_same_with_and_without_jit():
  rng = np.random.default_rng(2)
  user_emb_UxD = rng.integers(-2, 3, (4, DIM)).astype(np.float32)
  item_emb_IxD = rng.integers(-2, 3, (10, DIM)).astype(np.float32)
  target_U = np.array([1, 9, 5, 5], np.int32)
  history_UxH = np.array([[1, 1, 0], [2, 3, 2], [0, 0, 0], [9, 5, 9]], np.int32)
  expected_U = naive_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH)
  jitted = jax.jit(metrics.target_ranks, static_argnames="item_block")
  np.testing.assert_array_equal(
      jitted(user_emb_UxD, item_emb_IxD, target_U, history_UxH, item_block=4), expected_U)
  with jax.disable_jit():
    np.testing.assert_array_equal(
        metrics.target_ranks(user_emb_UxD, item_emb_IxD, target_U, history_UxH,
                             item_block=4), expected_U)


def test_evaluate_ranks_compiles_one_shape(caplog):
  rng = np.random.default_rng(3)
  args = (rng.normal(size=(9, 7)).astype(np.float32),  # D=7: a shape no other test uses
          rng.normal(size=(11, 7)).astype(np.float32),
          rng.integers(1, 11, 9).astype(np.int32), np.zeros((9, 2), np.int32))
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    metrics.evaluate_ranks(*args, block_size=4, item_block=4)  # 3 blocks, last padded
  compiles = [r for r in caplog.records if "Compiling" in r.getMessage()
              and "target_ranks" in r.getMessage()]
  assert len(compiles) == 1


@settings(deadline=None, max_examples=20)
@given(st.lists(st.lists(st.integers(0, 6), max_size=12), max_size=5),
       st.integers(0, 2))
def test_padded_histories_dedups_and_pads(rows, extra_users):
  indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
  indices = np.array([i for r in rows for i in r], dtype=np.int64)
  history_UxH = metrics.padded_histories(indptr, indices, num_users=len(rows) + extra_users)
  assert history_UxH.dtype == np.int32
  longest = max((len(set(r)) for r in rows), default=0)
  assert history_UxH.shape == (len(rows) + extra_users, math.ceil(longest / 8) * 8)
  for u in range(history_UxH.shape[0]):
    want = np.unique(rows[u]) if u < len(rows) else np.zeros(0, np.int64)
    np.testing.assert_array_equal(history_UxH[u, :len(want)], want)
    assert not history_UxH[u, len(want):].any()


def test_padded_histories_rejects_bad_csr():
  with pytest.raises(ValueError, match="non-decreasing and end at len"):
    metrics.padded_histories([0, 3], [1, 2])
  with pytest.raises(ValueError, match="num_users=1 < 2 CSR rows"):
    metrics.padded_histories([0, 1, 2], [1, 2], num_users=1)
  for indptr in ([], [[0, 1]], [1, 2]):  # empty, 2-D, not starting at 0
    with pytest.raises(ValueError, match="indptr must be 1-D and start at 0"):
      metrics.padded_histories(indptr, [1, 2])
  with pytest.raises(ValueError, match="non-decreasing"):
    metrics.padded_histories([0, 2, 1], [1])  # ends at len(indices), but decreases
  with pytest.raises(ValueError, match="history item ids must be >= 0"):
    metrics.padded_histories([0, 2], [1, -1])
  with pytest.raises(ValueError, match="multiple must be >= 1, got 0"):
    metrics.padded_histories([0, 2], [1, 2], multiple=0)


def test_padded_histories_defaults_and_multiple():
  """One row per CSR row unless num_users says more; widths rounded to `multiple` (1: none)."""
  indptr, indices = [0, 3, 3, 4], [5, 2, 5, 7]
  np.testing.assert_array_equal(metrics.padded_histories(indptr, indices, multiple=1),
                                [[2, 5], [0, 0], [7, 0]])
  np.testing.assert_array_equal(metrics.padded_histories(indptr, indices, num_users=4, multiple=3),
                                [[2, 5, 0], [0, 0, 0], [7, 0, 0], [0, 0, 0]])
  assert metrics.padded_histories([0, 0, 0], []).shape == (2, 0)  # no history at all: no slot


def test_ranking_metrics_hand_computed():
  assert metrics.ranking_metrics([0], (1,)) == {"count": 1, "hr@1": 1.0, "ndcg@1": 1.0,
                                                "mrr": 1.0}
  one = metrics.ranking_metrics([1], (1, 2))
  assert one["hr@1"] == 0.0 and one["ndcg@1"] == 0.0 and one["hr@2"] == 1.0
  assert one["ndcg@2"] == pytest.approx(1 / math.log2(3)) and one["mrr"] == 0.5
  got = metrics.ranking_metrics(np.array([0, 1, 4, 20]), (1, 5))
  assert got["count"] == 4
  assert got["hr@1"] == pytest.approx(0.25) and got["hr@5"] == pytest.approx(0.75)
  assert got["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
  assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 21) / 4)
  assert all(type(v) is float for k, v in got.items() if k != "count")


def test_ranking_metrics_empty_is_nan():
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # NaN without numpy's "mean of empty slice" warning
    got = metrics.ranking_metrics(np.zeros(0, np.int32), (5,))
  assert got["count"] == 0 and math.isnan(got["hr@5"]) and math.isnan(got["mrr"])


def test_ranking_metrics_rejects_negative_ranks():
  with pytest.raises(ValueError, match="ranks must be >= 0"):
    metrics.ranking_metrics([0, -1])


def test_evaluate_ranks_rejects_out_of_range_ids():
  user_emb_UxD = np.zeros((2, DIM), np.float32)
  item_emb_IxD = np.zeros((5, DIM), np.float32)
  with pytest.raises(ValueError, match="targets"):
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, np.array([0, 1]), np.zeros((2, 1)))
  with pytest.raises(ValueError, match="targets"):  # item ids end at I - 1
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, np.array([1, 5]), np.zeros((2, 1)))
  with pytest.raises(ValueError, match="history"):
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, np.array([1, 1]), np.full((2, 1), 5))


def test_evaluate_ranks_of_no_users_is_empty():
  rank_U = metrics.evaluate_ranks(np.zeros((0, DIM), np.float32), np.zeros((5, DIM), np.float32),
                                  np.zeros(0, np.int32), np.zeros((0, 3), np.int32))
  assert rank_U.dtype == np.int32 and rank_U.shape == (0,)


def test_evaluate_ranks_rejects_mismatched_shapes():
  user_emb_UxD = np.zeros((2, DIM), np.float32)
  item_emb_IxD = np.zeros((5, DIM), np.float32)
  targets, history = np.array([1, 2]), np.zeros((2, 1), np.int32)
  with pytest.raises(ValueError, match=r"item_emb shape \(5, 4\) does not match user dim 3"):
    metrics.evaluate_ranks(user_emb_UxD, np.zeros((5, DIM + 1), np.float32), targets, history)
  with pytest.raises(ValueError, match="do not match 2 users"):
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, np.array([1, 2, 3]), history)  # targets
  with pytest.raises(ValueError, match="do not match 2 users"):
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, targets, np.zeros((3, 1), np.int32))  # rows
  with pytest.raises(ValueError, match="do not match 2 users"):
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, targets, np.zeros(2, np.int32))  # 1-D
  with pytest.raises(ValueError, match="block_size and item_block must be >= 1"):
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, targets, history, block_size=0)
  with pytest.raises(ValueError, match="block_size and item_block must be >= 1"):
    metrics.evaluate_ranks(user_emb_UxD, item_emb_IxD, targets, history, item_block=0)
