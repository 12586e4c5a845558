"""End to end on a shrunken config: train, stop, resume, evaluate, export, recall."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrec import checkpoints
from jaxrec import click_log
from jaxrec import evaluate
from jaxrec import export
from jaxrec import config
from jaxrec import holdout
from jaxrec import train
from jaxrec.model import ModelConfig

LOG = click_log.synthetic_click_log(600, 120, seed=0, mean_length=8)
SPLIT = holdout.leave_one_out(LOG)


def tiny_config(num_epochs: int, **overrides) -> config.Config:
  model = ModelConfig(num_items=LOG.num_items, seq_length=12, hidden_size=16, num_attention_heads=2,
                      num_hidden_layers=2)
  defaults = dict(model=model, batch_size=64, num_epochs=num_epochs,
                  optimizer=config.OptimizerConfig(learning_rate=3e-3),
                  checkpoint_every_steps=4, log_every_steps=100, eval_ks=(10, 20))
  defaults.update(overrides)
  return config.make(**defaults)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def final_params(workdir):
  mgr = checkpoints.manager(workdir)
  return mgr.latest_step(), checkpoints.restore_params(mgr, mgr.latest_step())


def assert_same_tree(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-epoch run in one go: the reference for resume and the model for export."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  result = train.train_and_evaluate(tiny_config(4), SPLIT, workdir)
  return workdir, result


def test_loss_falls_and_workdir_holds_everything(trained):
  workdir, result = trained
  rows = read_metrics(workdir)
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses
  valid = [r for r in rows if r["split"] == "valid"]
  assert [r["epoch"] for r in valid] == [1, 2, 3, 4]
  test = [r for r in rows if r["split"] == "test"]
  assert len(test) == 1 and test[0]["ndcg@10"] == result["ndcg@10"]
  assert set(result) >= {"hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "count"}
  assert os.listdir(os.path.join(workdir, "checkpoints"))
  assert os.listdir(os.path.join(workdir, "best"))
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))


def test_model_beats_most_popular(trained):
  workdir, result = trained
  eval_users, ends, targets = SPLIT.eval_inputs("test")
  counts = SPLIT.item_counts()
  # Most-popular baseline with the same history exclusion, via the same rank code.
  table = np.zeros((LOG.num_items, 1), np.float32)
  table[:, 0] = counts
  users = np.ones((len(targets), 1), np.float32)
  starts = LOG.indptr[eval_users]
  from jaxrec import metrics
  indptr = np.concatenate([[0], np.cumsum(ends - starts)])
  hist = LOG.items[np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])]
  ranks = metrics.evaluate_ranks(users, table, targets, metrics.padded_histories(indptr, hist))
  popular = metrics.ranking_metrics(ranks, (10,))
  assert result["ndcg@10"] > 1.5 * popular["ndcg@10"], (result, popular)


def test_stop_and_resume_ends_identical(trained, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(2), SPLIT, workdir)  # "stopped" after 2 epochs
  train.train_and_evaluate(tiny_config(4), SPLIT, workdir)  # the same run, resumed to the end
  step, params = final_params(workdir)
  ref_step, ref_params = final_params(trained[0])
  assert step == ref_step
  assert_same_tree(params, ref_params)


def test_eval_matches_training_validation(trained):
  workdir, _ = trained
  step, params = final_params(workdir)
  config = tiny_config(4).model
  valid = evaluate.evaluate(params, config, SPLIT, "valid", (10, 20))
  last = [r for r in read_metrics(workdir) if r["split"] == "valid"][-1]
  assert last["step"] == step
  assert valid["ndcg@10"] == pytest.approx(last["ndcg@10"], abs=1e-6)


@pytest.mark.e2e  # starts jaxrec processes
def test_export_then_recall_hit_rate_equals_test_hr(trained, tmp_path):
  """Recall of an --export_until=test export hits the test items exactly as often as HR@K says."""
  workdir, _ = trained
  best = checkpoints.manager(workdir, checkpoints.BEST, 1, 1)
  params = checkpoints.restore_params(best, best.latest_step())
  config = tiny_config(4).model
  path = str(tmp_path / "emb.npz")
  arrays = export.export_embeddings(params, config, LOG, path, until="test")
  loaded = np.load(path, allow_pickle=False)
  assert set(loaded.files) == set(arrays)
  assert loaded["user_emb"].shape == (LOG.num_users, 16) and loaded["item_emb"].shape == (LOG.num_items - 1, 16)
  for top_n in (10, 20):
    out = tmp_path / f"recall{top_n}.tsv"
    subprocess.run([sys.executable, "-m", "jaxrec.recall", f"--embeddings={path}", f"--top_n={top_n}",
                    f"--output={out}"], check=True, capture_output=True)
    recalled = dict(line.split("\t") for line in out.read_text().splitlines())
    eval_users, _, targets = SPLIT.eval_inputs("test")
    hits = [LOG.item_ids[t] in recalled[LOG.user_ids[u]].split(",") for u, t in zip(eval_users, targets)]
    expected = evaluate.evaluate(params, config, SPLIT, "test", (top_n,))[f"hr@{top_n}"]
    assert np.mean(hits) == pytest.approx(expected, abs=1e-9)


def test_resume_validates_an_epoch_killed_before_its_validation(tmp_path):
  reference = train.train_and_evaluate(tiny_config(2), SPLIT, str(tmp_path / "ref"))
  workdir = str(tmp_path / "work")
  train.train_and_evaluate(tiny_config(1), SPLIT, workdir)
  # Epoch 2 checkpointed but never validated, as when killed during its validation.
  train.train_and_evaluate(tiny_config(2, eval_every_epochs=0), SPLIT, workdir)
  assert [r["epoch"] for r in read_metrics(workdir) if r["split"] == "valid"] == [1]
  result = train.train_and_evaluate(tiny_config(2), SPLIT, workdir)
  assert [r["epoch"] for r in read_metrics(workdir) if r["split"] == "valid"] == [1, 2]
  assert result == reference


@pytest.mark.e2e  # starts jaxrec processes
def test_cli_eval_of_best_checkpoints_reproduces_the_test_row(tmp_path):
  """`--mode=eval --checkpoints=best` evaluates the model training selected, not the last one."""
  workdir = str(tmp_path / "wd")
  args = [sys.executable, "-m", "jaxrec.main", "--data_format=synthetic", "--synthetic_users=300",
          "--synthetic_items=100", "--seq_length=10", "--hidden_size=16", "--batch_size=32", "--num_epochs=6",
          "--learning_rate=1.0", "--checkpoint_every_steps=1000", f"--workdir={workdir}"]
  subprocess.run(args, check=True, capture_output=True)
  rows = read_metrics(workdir)
  valid = [r for r in rows if r["split"] == "valid"]
  best = max(valid, key=lambda r: r["ndcg@10"])
  assert best["step"] != valid[-1]["step"], valid  # too high a learning rate: the best comes early
  for which, step in (("best", best["step"]), ("latest", valid[-1]["step"])):
    subprocess.run(args + ["--mode=eval", f"--checkpoints={which}"], check=True, capture_output=True)
    evaluated = [r for r in read_metrics(workdir) if r.get("mode") == "eval"][-2:]
    assert [r["step"] for r in evaluated] == [step, step]
    want = best if which == "best" else valid[-1]
    assert evaluated[0]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-6)
  test = [r for r in rows if r["split"] == "test" and "mode" not in r][-1]
  evaluated_best = [r for r in read_metrics(workdir) if r.get("mode") == "eval" and r["split"] == "test"][0]
  assert evaluated_best["ndcg@10"] == pytest.approx(test["ndcg@10"], abs=1e-6)
