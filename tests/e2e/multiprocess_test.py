"""Two processes joined by jax.distributed, each holding only its own users (hosts.py).

Runs the real CLI (`python -m jaxrec.main`) on one machine: 2 processes x 2 CPU devices
with a loopback coordinator, against one process of 4 devices given the same 2 data shards
(--data_shards=2, so the same batches). Training must agree; evaluation and export of fixed
parameters must equal the single process's, evaluation exactly.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrec import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 240
# Tiny model and data: 3 steps of a batch (18) that does not divide by 4 global devices.
FLAGS = ("--data_format=synthetic", "--synthetic_users=49", "--synthetic_items=30",
         "--num_epochs=1", "--batch_size=18", "--eval_every_epochs=0", "--seq_length=8",
         "--hidden_size=8", "--num_attention_heads=2", "--learning_rate=0.01")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, num_devices: int, extra=(), base=FLAGS):
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(),
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # No shared compilation cache (conftest): the cache writes its entries unlocked, and
  # the other process of a pair would read one half-written, warn and compile anyway.
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return subprocess.Popen([sys.executable, "-m", "jaxrec.main", *base, f"--workdir={workdir}", *extra],
                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pair(workdir, extra=(), base=FLAGS) -> list:
  """The two processes of a 2-process run."""
  port = _free_port()
  return [_launch(workdir, 2, (f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}", *extra), base) for i in range(2)]


def _wait_all(procs) -> list:
  """Waits for every process; on a failure or the deadline kills the rest (no hung CI)."""
  deadline = time.monotonic() + TIMEOUT_S
  outputs = [None] * len(procs)
  try:
    for i, proc in enumerate(procs):
      try:
        outputs[i], _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
      except subprocess.TimeoutExpired:
        pytest.fail(f"process {i} still running after {TIMEOUT_S}s")
      if proc.returncode != 0:
        pytest.fail(f"process {i} exited with {proc.returncode}:\n{outputs[i][-3000:]}")
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return outputs


def _final_params(workdir):
  mgr = checkpoints.manager(str(workdir))
  step = mgr.latest_step()
  assert step is not None, f"no checkpoint in {workdir}"
  params = checkpoints.restore_params(mgr, step)
  mgr.close()
  return step, params


@pytest.mark.parametrize("layout", [("--layout=packed",), ("--loss=full", "--layout=rows")],
                         ids=["inbatch-packed", "full-rows"])
def test_two_processes_train_like_one_process_with_their_data_shards(tmp_path, layout):
  single, multi = tmp_path / "single", tmp_path / "multi"
  procs = [_launch(single, 4, ("--data_shards=2", *layout))] + _pair(multi, layout)
  outputs = _wait_all(procs)
  # Each of the 2 shards has 9 users a batch, padded to its 2 devices: 10 rows, 20 in all.
  assert "global batch 20 on 4 device(s)" in outputs[0], outputs[0][-2000:]
  assert "global batch 20 on 4 device(s)" in outputs[1], outputs[1][-2000:]
  assert "2 data shards of 10 rows" in outputs[1], outputs[1][-2000:]
  # progress is printed by the first process only
  assert "global batch" not in outputs[2] and "step" not in outputs[2], outputs[2][-2000:]
  _assert_disjoint_shares(outputs[1:], "holds")
  single_step, single_params = _final_params(single)
  multi_step, multi_params = _final_params(multi)
  assert single_step == multi_step >= 2
  flat_single = dict(jax.tree_util.tree_leaves_with_path(single_params))
  flat_multi = dict(jax.tree_util.tree_leaves_with_path(multi_params))
  assert flat_single.keys() == flat_multi.keys() and len(flat_single) > 10
  for path, value in flat_single.items():
    np.testing.assert_allclose(np.asarray(flat_multi[path]), np.asarray(value), rtol=0, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  # Adam steps hardly see a wrongly scaled loss: compare the logged epoch losses too. Only
  # process 0 writes the metrics log, so it holds one epoch row, not two.
  single_rows, multi_rows = (_train_rows(workdir) for workdir in (single, multi))
  assert len(single_rows) == len(multi_rows) == 1
  assert multi_rows[0]["loss"] == pytest.approx(single_rows[0]["loss"], rel=1e-5)


def test_two_processes_evaluate_and_export_fixed_parameters_like_one(tmp_path):
  """Each process ranks and encodes only its own users; the combined metrics equal one
  process's exactly, and the first process writes every user's vector."""
  workdir = tmp_path / "run"
  _wait_all([_launch(workdir, 1, ("--eval_every_epochs=1",))])
  single_npz, multi_npz = tmp_path / "single.npz", tmp_path / "multi.npz"
  _wait_all([_launch(workdir, 1, ("--mode=eval",))])
  single_eval = _eval_rows(workdir)
  _assert_disjoint_shares(_wait_all(_pair(workdir, ("--mode=eval",))), "holds")
  multi_eval = _eval_rows(workdir)[len(single_eval):]
  assert len(single_eval) == len(multi_eval) == 2  # valid and test, written once
  for one, two in zip(single_eval, multi_eval):
    assert one == two and one["count"] > 10
  _wait_all([_launch(workdir, 1, ("--mode=export", f"--output={single_npz}"))])
  _assert_disjoint_shares(_wait_all(_pair(workdir, ("--mode=export", f"--output={multi_npz}"))), "exports")
  one, two = np.load(single_npz), np.load(multi_npz)
  np.testing.assert_array_equal(two["user_ids"], one["user_ids"])
  np.testing.assert_array_equal(two["visited_indptr"], one["visited_indptr"])
  np.testing.assert_array_equal(two["visited_indices"], one["visited_indices"])
  np.testing.assert_array_equal(two["item_emb"], one["item_emb"])
  # XLA may round a user's vector by the block it runs in: float32 rounding, not more.
  np.testing.assert_allclose(two["user_emb"], one["user_emb"], rtol=1e-5, atol=1e-6)


def _assert_disjoint_shares(outputs, verb):
  """Each process says how many users it kept; together they are every user, once."""
  kept = []
  for i, out in enumerate(outputs):
    match = re.search(rf"process {i}/2 {verb} (\d+) of (\d+) users", out)
    assert match, out[-2000:]
    kept.append((int(match[1]), int(match[2])))
  assert 0 < kept[0][0] < kept[0][1] and kept[0][0] + kept[1][0] == kept[0][1] == kept[1][1], kept


def _eval_rows(workdir) -> list:
  with open(workdir / "metrics.jsonl") as f:
    return [row for row in map(json.loads, f) if row.get("mode") == "eval"]


def _train_rows(workdir) -> list:
  with open(workdir / "metrics.jsonl") as f:
    return [row for row in map(json.loads, f) if row["split"] == "train"]


def test_two_processes_reading_only_their_files_train_and_evaluate_like_one(tmp_path):
  """--shard_by=file: a Parquet directory of 4 files, each holding whole users (as Spark's
  repartition by user writes it); each of 2 processes reads its 2 files (and the item column of
  all 4); one process reading all 4 as 2 shards trains and evaluates the same."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  from jaxrec import click_log
  log = click_log.synthetic_click_log(49, 30, seed=0)
  data = tmp_path / "clicks"
  data.mkdir()
  for f in range(4):
    users = [u for u in range(log.num_users) if u % 4 == f]
    rows = [(log.user_ids[u], log.item_ids[log.items[k]], k) for u in users
            for k in range(log.indptr[u], log.indptr[u + 1])]
    pq.write_table(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows], "ts": [r[2] for r in rows]}),
                   data / f"part-{f:05d}.parquet")
  (data / "_SUCCESS").write_text("")
  flags = (f"--data_path={data}", "--time_col=ts", "--shard_by=file", *FLAGS[3:])
  single, multi = tmp_path / "single", tmp_path / "multi"
  outputs = _wait_all([_launch(single, 4, ("--data_shards=2",), flags)] + _pair(multi, (), flags))
  _assert_disjoint_shares(outputs[1:], "holds")
  assert "2 data shards of 10 rows" in outputs[1], outputs[1][-2000:]
  (single_step, single_params), (multi_step, multi_params) = _final_params(single), _final_params(multi)
  assert single_step == multi_step >= 2
  flat_single = dict(jax.tree_util.tree_leaves_with_path(single_params))
  flat_multi = dict(jax.tree_util.tree_leaves_with_path(multi_params))
  assert flat_single.keys() == flat_multi.keys()
  for path, value in flat_single.items():
    np.testing.assert_allclose(np.asarray(flat_multi[path]), np.asarray(value), rtol=0, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  _wait_all([_launch(single, 4, ("--data_shards=2", "--mode=eval"), flags)])
  _wait_all(_pair(single, ("--mode=eval",), flags))
  rows = _eval_rows(single)
  assert len(rows) == 4  # valid and test, of one process and of two
  for one, two in zip(rows[:2], rows[2:]):
    assert one == two and one["count"] > 10
