"""Two processes joined by jax.distributed train exactly like one process on one device.

Runs the real CLI (`python -m jaxrec.main`) three times on one machine: once alone on 1 CPU
device, and as 2 processes x 2 CPU devices with a loopback coordinator, then compares the
final checkpoints' parameters.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrec import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240
# Tiny model and data: 3 steps of a batch (18) that does not divide by 4 global devices.
FLAGS = ("--data_format=synthetic", "--synthetic_users=49", "--synthetic_items=30",
         "--num_epochs=1", "--batch_size=18", "--eval_every_epochs=0", "--seq_length=8",
         "--hidden_size=8", "--num_attention_heads=2", "--learning_rate=0.01")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, num_devices: int, extra=()):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen([sys.executable, "-m", "jaxrec.main", *FLAGS, f"--workdir={workdir}", *extra],
                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def test_two_processes_train_like_one_device(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  port = _free_port()
  procs = [_launch(single, 1)]
  procs += [_launch(multi, 2, (f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}")) for i in range(2)]
  outputs = _wait_all(procs)
  assert "on 1 device(s)" in outputs[0], outputs[0][-2000:]
  # 18 rows padded to 4 devices; progress is printed by the first process only.
  assert "global batch 20 on 4 device(s)" in outputs[1], outputs[1][-2000:]
  assert "global batch" not in outputs[2] and "step" not in outputs[2], outputs[2][-2000:]
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


def _train_rows(workdir) -> list:
  with open(workdir / "metrics.jsonl") as f:
    return [row for row in map(json.loads, f) if row["split"] == "train"]
