"""Data-parallel training on 4 fake CPU devices equals training on 1 device.

Each run is a subprocess: the device count is fixed by XLA_FLAGS before jax is imported.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 240

# Trains one epoch of a tiny model with the real Trainer; saves flat params and metrics.
# batch_size 18 does not divide by 4: 4 devices pad it to 20 rows (row_mask 0), 1 device
# keeps 18; the last batch of each length bucket is partial (more masked rows) in both.
_WORKER = r"""
import sys
import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from jaxrec import click_log
from jaxrec import holdout
from jaxrec.model import ModelConfig
from jaxrec.config import LossConfig, OptimizerConfig, make
from jaxrec.train import Trainer

out, workdir, kind = sys.argv[1], sys.argv[2], sys.argv[3]
log = click_log.synthetic_click_log(num_users=49, num_items=30, seed=0)
split = holdout.leave_one_out(log)
model = ModelConfig(num_items=log.num_items, seq_length=8, hidden_size=8, num_attention_heads=2)
config = make(model=model, batch_size=18, num_epochs=1, optimizer=OptimizerConfig(1e-2),
                     eval_every_epochs=0, bucket_lengths=(4,), loss=LossConfig(kind=kind))
trainer = Trainer(config, split, workdir)
state = trainer.init_state()
losses, grad_norms, rows, lengths, shard_rows = [], [], [], [], []
for index in range(trainer.steps_per_epoch):
  batch, _ = trainer.batch(0, index)
  ids = batch.input_ids
  assert ids.sharding.spec == P("data"), ids.sharding
  rows.append(ids.shape[0])
  lengths.append(ids.shape[1])
  shard_rows.append(sorted({s.data.shape[0] for s in ids.addressable_shards}))
  assert len(ids.sharding.device_set) == jax.device_count()
  if kind == "full":  # each device scores the real slots of its own rows
    assert batch.slots.shape[0] == jax.device_count() and batch.slots.sharding.spec == P("data")
  state, metrics = trainer.train_step(state, batch)
  losses.append(float(metrics["loss"]))
  grad_norms.append(float(metrics["grad_norm"]))
flat = {"/".join(k.key for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(state.params)}
np.savez(out, devices=jax.device_count(), steps=int(state.step), rows=np.array(rows),
         lengths=np.array(lengths),
         shard_rows=np.array(shard_rows), losses=np.array(losses), grad_norms=np.array(grad_norms),
         **{"param:" + k: v for k, v in flat.items()})
"""


def _start(num_devices: int, tmp_path, kind: str):
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(),
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = tmp_path / f"devices{num_devices}.npz"
  proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(out), str(tmp_path / f"w{num_devices}"), kind],
                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  return proc, out


def _finish(proc):
  try:
    output, _ = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    output, _ = proc.communicate()
    pytest.fail(f"worker timed out after {TIMEOUT_S}s:\n{output[-3000:]}")
  assert proc.returncode == 0, output[-3000:]


@pytest.mark.parametrize("kind", ["inbatch", "full"])
def test_four_devices_train_like_one(tmp_path, kind):
  runs = [_start(n, tmp_path, kind) for n in (1, 4)]  # both at once: compiles overlap
  try:
    for proc, _ in runs:
      _finish(proc)
  finally:
    for proc, _ in runs:
      if proc.poll() is None:
        proc.kill()
  one, four = (np.load(out) for _, out in runs)
  assert int(one["devices"]) == 1 and int(four["devices"]) == 4
  steps = int(one["steps"])
  assert steps >= 2 and int(four["steps"]) == steps
  np.testing.assert_array_equal(one["rows"], 18)  # 1 device: no padding to a multiple
  np.testing.assert_array_equal(four["rows"], 20)  # 18 rounded up to a multiple of 4
  np.testing.assert_array_equal(four["shard_rows"], 5)  # each device holds a quarter
  np.testing.assert_array_equal(four["lengths"], one["lengths"])
  assert set(one["lengths"].tolist()) == {4, 8}  # both length buckets ran
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(four["grad_norms"], one["grad_norms"], rtol=1e-5, atol=1e-7)
  names = sorted(k for k in one.files if k.startswith("param:"))
  assert names == sorted(k for k in four.files if k.startswith("param:")) and len(names) > 10
  for name in names:
    np.testing.assert_allclose(four[name], one[name], rtol=0, atol=1e-5, err_msg=name)
