"""--eval_users: validation (and early stopping) on a fixed, seeded sample of users; the test
on everyone or on the sample. The sample's metrics are the full ranking's restricted to it."""

import json

import numpy as np
import pytest

from jaxrec import api
from jaxrec import checkpoints
from jaxrec import click_log
from jaxrec import config
from jaxrec import evaluate
from jaxrec import holdout
from jaxrec import metrics


def test_the_sample_is_fixed_by_the_seed_and_the_test_follows_it_when_asked():
  log = click_log.synthetic_click_log(500, 60, seed=3)
  split = holdout.leave_one_out(log)
  a, b, c = split.sampled(100, 0, False), split.sampled(100, 0, False), split.sampled(100, 1, False)
  np.testing.assert_array_equal(a.valid_users, b.valid_users)  # the same draw every time
  assert len(a.valid_users) == 100 and len(set(a.valid_users)) == 100
  assert set(a.valid_users) <= set(split.valid_users) and set(a.valid_users) != set(c.valid_users)
  assert np.all(np.diff(a.valid_users) > 0)
  np.testing.assert_array_equal(a.valid_ends, split.valid_ends[np.searchsorted(split.valid_users, a.valid_users)])
  np.testing.assert_array_equal(a.test_users, split.test_users)  # the test: everyone
  t = split.sampled(100, 0, True)
  np.testing.assert_array_equal(t.test_users, a.valid_users)  # leave-one-out: the same users
  np.testing.assert_array_equal(t.test_ends, a.valid_ends + 1)
  assert split.sampled(0, 0, True) is split and split.sampled(10_000, 0, True) is split
  assert "validation and test on a sample of 100 of 500 users" in t.describe()


def test_sampled_metrics_are_the_full_rankings_restricted_to_the_sample(tmp_path):
  cfg = config.make(data_format="synthetic", synthetic_users=400, synthetic_items=50, hidden_size=16,
                    num_hidden_layers=1, seq_length=10, batch_size=64, num_epochs=1, workdir=str(tmp_path / "run"),
                    eval_users=90, test_users="sample")
  api.train(cfg)
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  valid = [r for r in rows if r["split"] == "valid"][-1]
  test = [r for r in rows if r["split"] == "test"][-1]
  assert valid["count"] == 90 and valid["sampled_from"] == 400 and test["count"] == 90
  # Independently: every user's rank under the trained model, then the sample's users only.
  log = click_log.synthetic_click_log(400, 50, seed=0)
  full = holdout.leave_one_out(log)
  sample = np.searchsorted(full.valid_users, full.sampled(90, 0, True).valid_users)  # the run's --seed=0 draw
  model, mgr, step = checkpoints.select(str(tmp_path / "run"), "latest")
  params = checkpoints.restore_params(mgr, step)
  users, ends, targets = full.eval_inputs("valid")
  user_emb = evaluate.user_vectors(params, model, log, users, ends)
  item_emb = evaluate.item_table(params, model).astype(np.float64)
  ranks = []
  for k in sample:  # a naive float64 rank: unvisited items scoring at least the target's
    u, end, target = users[k], ends[k], targets[k]
    scores = item_emb @ user_emb[k].astype(np.float64)
    seen = set(log.items[log.indptr[u]:end].tolist())
    if target in seen:
      ranks.append(np.inf)
      continue
    ranks.append(sum(1 for i in range(1, len(item_emb)) if i != target and i not in seen
                     and scores[i] >= scores[target]))
  want = metrics.ranking_metrics(ranks, (10, 20, 50))
  got = api.evaluate(cfg.replace(eval={"checkpoints": "latest"}))
  assert got[0]["count"] == 90
  assert got[0]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=2e-3)  # float32 near-ties aside
  assert got[0]["hr@10"] == pytest.approx(want["hr@10"], abs=1 / 90 + 1e-9)
