"""Warm start (--init_from): the vocabulary merge, the grafted parameters at step 0, the
errors, and a SIGKILLed warm-started run resuming bit-identically."""

import os
import re
import signal
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import config as config_lib
from jaxrec import checkpoints
from jaxrec import click_log
from jaxrec import holdout
from jaxrec import train
from jaxrec import warm_start
from jaxrec.model import ModelConfig, init_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--data_format=synthetic --synthetic_users=300 --hidden_size=16 --num_hidden_layers=1 "
        "--seq_length=10 --batch_size=32 --eval_every_epochs=0 --log_every_steps=1").split()
PROGRESS = re.compile(r"^\d\d:\d\d:\d\d epoch \d+ step (\d+)/\d+ ")


def cli(*args, **kwargs):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "jaxrec.main", *args], env=env, capture_output=True, text=True,
                        timeout=300, **kwargs)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.text("abcxyz", min_size=1, max_size=3), unique=True),
       st.lists(st.text("abcxyz", min_size=1, max_size=3), unique=True))
def test_merge_keeps_old_rows_and_appends_new_ids(old, today):
  old_ids = np.array([""] + old, dtype=str)
  log_ids = np.array([""] + sorted(today), dtype=str)
  merged, new = warm_start.merge_vocab(old_ids, log_ids)
  # Reference: a dict from id to row, grown by appending unseen ids in sorted order.
  rows = {item: row for row, item in enumerate(old_ids)}
  for item in sorted(set(today) - set(old)):
    rows[item] = len(rows)
  assert {str(item): row for row, item in enumerate(merged)} == rows
  assert len(set(merged.tolist())) == len(merged)  # no id twice
  assert set(merged.tolist()) == {""} | set(old) | set(today)  # none lost
  np.testing.assert_array_equal(new, np.arange(len(merged)) >= len(old_ids))


@pytest.mark.parametrize("share", [False, True])
def test_grafted_state_copies_the_base_and_initialises_new_rows_as_a_cold_start(share):
  base_config = ModelConfig(num_items=41, seq_length=8, hidden_size=16, num_attention_heads=2,
                            num_hidden_layers=1, share_embeddings=share)
  base = init_params(base_config, jax.random.key(7))
  log = click_log.synthetic_click_log(200, 300, seed=1)
  config = config_lib.make(model=ModelConfig(**{**base_config.__dict__, "num_items": log.num_items}),
                             batch_size=16, eval_every_epochs=0, seed=3)
  split = holdout.leave_one_out(log)
  warm = train.Trainer(config, split, tempfile.mkdtemp(), base).init_state()
  cold = train.Trainer(config, split, tempfile.mkdtemp()).init_state()
  assert int(warm.step) == 0
  tables = {"item_embeddings"} | (set() if share else {"outputs_embedding"})
  assert {k for k in warm.params if k in warm_start.TABLES} == tables
  warm_leaves = dict(jax.tree_util.tree_flatten_with_path(warm.params)[0])
  base_leaves = dict(jax.tree_util.tree_flatten_with_path(base)[0])
  assert warm_leaves.keys() == base_leaves.keys()
  for path, leaf in warm_leaves.items():
    got, want = np.asarray(leaf), np.asarray(base_leaves[path])
    name = path[0].key
    if name in tables:
      np.testing.assert_array_equal(got[:41], want)  # old rows bit for bit
      np.testing.assert_array_equal(got[41:], np.asarray(cold.params[name]["embedding"])[41:])  # a cold start's
      assert 0.018 < got[41:].std() < 0.022  # the initialiser's normal(0.02)
    else:
      np.testing.assert_array_equal(got, want)
  # The optimizer starts fresh: zero Adam moments.
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(warm.opt_state) if np.asarray(x).ndim > 0)


def test_errors_name_the_flag_or_the_workdir(tmp_path):
  day1 = str(tmp_path / "day1")
  assert cli(*TINY, "--num_epochs=1", "--synthetic_items=80", f"--workdir={day1}").returncode == 0
  for extra, message in [
      (["--hidden_size=32", "--init_checkpoints=latest"], f"--hidden_size=32: the model of --init_from={day1} has hidden_size=16"),
      (["--share_embeddings", "--init_checkpoints=latest"], f"--share_embeddings=True: the model of --init_from={day1} has share_embeddings=False"),
      (["--init_checkpoints=best"], f"--init_from={day1}: no checkpoint in {day1}/best"),
  ]:
    result = cli(*TINY, "--num_epochs=1", f"--workdir={tmp_path}/new", f"--init_from={day1}", *extra)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and not os.path.exists(tmp_path / "new")
  (tmp_path / "empty").mkdir()
  result = cli(*TINY, f"--workdir={tmp_path}/new", f"--init_from={tmp_path}/empty")
  assert result.returncode == 2 and "not a jaxrec workdir" in result.stderr


@pytest.fixture(scope="module")
def day2_reference(tmp_path_factory):
  """(day 1 workdir, day 2 flags, uninterrupted day 2 workdir): a day-2 run warm-started
  from day 1 on a log of 100 synthetic items (day 1 had 80), shared by the kill points below."""
  root = tmp_path_factory.mktemp("warm_start")
  day1 = str(root / "day1")
  assert cli(*TINY, "--num_epochs=1", "--synthetic_items=80", f"--workdir={day1}").returncode == 0
  day2 = [*TINY, "--num_epochs=4", "--synthetic_items=100", "--checkpoint_every_steps=4", f"--init_from={day1}",
          "--init_checkpoints=latest"]
  reference = str(root / "reference")
  assert cli(*day2, f"--workdir={reference}").returncode == 0
  return day1, day2, reference


# Killed before its first checkpoint (it starts again from the base model) or after one.
@pytest.mark.parametrize("kill_at", [2, 9])
def test_warm_started_run_records_new_items_and_resumes_bit_identically_after_sigkill(kill_at, day2_reference,
                                                                                      tmp_path):
  day1, day2, reference = day2_reference
  with np.load(os.path.join(reference, "vocab.npz")) as npz:
    item_ids, new = npz["item_ids"], npz["new_items"]
  with np.load(os.path.join(day1, "vocab.npz")) as npz:
    old_ids = npz["item_ids"]
  np.testing.assert_array_equal(item_ids[:len(old_ids)], old_ids)
  assert set(item_ids[new].tolist()) == set(item_ids.tolist()) - set(old_ids.tolist()) and new.sum() > 0

  killed = str(tmp_path / "killed")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-m", "jaxrec.main", *day2, f"--workdir={killed}"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  while True:
    line = proc.stderr.readline()
    assert line, f"training ended before step {kill_at}"
    match = PROGRESS.match(line)
    if match and int(match.group(1)) >= kill_at:  # at 9 the step-4 save is complete: step 8's waited
      break
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert cli(*day2, f"--workdir={killed}").returncode == 0
  mgr = lambda w: checkpoints.manager(w, writer=False)
  final = mgr(reference).latest_step()
  assert mgr(killed).latest_step() == final
  a = checkpoints.restore_params(mgr(reference), final)
  b = checkpoints.restore_params(mgr(killed), final)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Export and recall read the grown catalog as any other.
  assert cli(*day2, f"--workdir={killed}", "--mode=export").returncode == 0
  with np.load(os.path.join(killed, "embeddings.npz")) as npz:
    np.testing.assert_array_equal(npz["item_ids"], item_ids[1:])


def test_a_warm_start_whose_log_lacks_old_items_keeps_them_and_reruns(tmp_path):
  day1 = str(tmp_path / "day1")
  assert cli(*TINY, "--num_epochs=1", "--synthetic_items=80", f"--workdir={day1}").returncode == 0
  log = click_log.synthetic_click_log(300, 100, seed=0)
  gone = {f"i{k}" for k in range(5)}  # clicked on day 1, not on day 2
  path = tmp_path / "day2.txt"
  with open(path, "w") as f:
    for u in range(log.num_users):
      items = [i for i in log.item_ids[log.items[log.indptr[u]:log.indptr[u + 1]]] if i not in gone]
      if items:
        f.write(" ".join([log.user_ids[u], *items]) + "\n")
  day2 = [*TINY[2:], "--num_epochs=1", f"--data_path={path}", f"--workdir={tmp_path}/day2", f"--init_from={day1}",
          "--init_checkpoints=latest"]
  assert cli(*day2).returncode == 0
  with np.load(os.path.join(day1, "vocab.npz")) as old, np.load(tmp_path / "day2" / "vocab.npz") as new:
    assert gone <= set(old["item_ids"].tolist()) and gone <= set(new["item_ids"].tolist())  # kept
  rerun = cli(*day2)  # the same command again: it resumes (nothing left to train), not refused
  assert rerun.returncode == 0, rerun.stderr
