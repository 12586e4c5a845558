"""Crash safety of training: SIGKILL (also mid-save), SIGTERM/SIGINT, non-finite losses.

Each test runs the real CLI on a tiny model and synthetic data. An interrupted run,
rerun with the same command, must resume from the last complete checkpoint and end
with parameters bit-identical to an uninterrupted run.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deadlines import wait_for
from jaxrec import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = ("--data_format=synthetic --synthetic_users=300 --synthetic_items=100 --hidden_size=16 "
         "--num_hidden_layers=1 --seq_length=10 --batch_size=32 --eval_every_epochs=0 --num_epochs=5 "
         "--checkpoint_every_steps=4 --log_every_steps=1").split()
PROGRESS = re.compile(r"^\d\d:\d\d:\d\d epoch \d+ step (\d+)/\d+ ")
INFO = re.compile(r"^\d\d:\d\d:\d\d ")  # console.info lines: progress, resuming, sizes
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def command(workdir, *extra):
  return [sys.executable, "-m", "jaxrec.main", *FLAGS, f"--workdir={workdir}", *extra]


def env(**extra):
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def start(workdir, *extra, **env_extra) -> subprocess.Popen:
  return subprocess.Popen(command(workdir, *extra), env=env(**env_extra), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def train(workdir, *extra, **env_extra) -> subprocess.CompletedProcess:
  return subprocess.run(command(workdir, *extra), env=env(**env_extra), stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True, timeout=300)


def read_progress(proc: subprocess.Popen, lines: int) -> list:
  """Reads stderr up to the `lines`-th progress line; returns what was read."""
  seen, count = [], 0
  while count < lines:
    line = proc.stderr.readline()
    assert line, f"training ended before {lines} progress lines:\n{''.join(seen)}"
    seen.append(line)
    count += bool(PROGRESS.match(line))
  return seen


def complete_steps(workdir) -> list:
  return sorted(checkpoints.manager(workdir, writer=False).all_steps())


def leftovers(workdir) -> list:
  return [n for n in os.listdir(os.path.join(workdir, checkpoints.LATEST)) if TMP_SUFFIX in n]


def params_at(workdir, step):
  return jax.device_get(checkpoints.restore_params(checkpoints.manager(workdir, writer=False), step))


def assert_same_params(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype and np.array_equal(a, e)


def assert_resumes_to_reference(workdir, last_step, reference):
  """Reruns the command: it must resume right after `last_step` and end as the reference did."""
  _, final_step, ref_params = reference
  result = train(workdir)
  assert result.returncode == 0, result.stderr
  assert "Traceback" not in result.stderr
  first = next(int(m.group(1)) for m in map(PROGRESS.match, result.stderr.splitlines()) if m)
  if last_step is None:
    assert "resuming" not in result.stderr
    assert first == 1
  else:
    assert f"resuming from {workdir}/{checkpoints.LATEST} at step {last_step}\n" in result.stderr
    assert first == last_step + 1
  assert complete_steps(workdir)[-1] == final_step
  assert leftovers(workdir) == []
  assert_same_params(params_at(workdir, final_step), ref_params)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(workdir, final step, final params) of an uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp("reference") / "workdir")
  result = train(workdir)
  assert result.returncode == 0, result.stderr
  final_step = complete_steps(workdir)[-1]
  assert final_step >= 40  # room for kills at several points
  return workdir, final_step, params_at(workdir, final_step)


@pytest.mark.parametrize("lines", [2, 20])
def test_sigkill_then_rerun_resumes_identically(lines, reference, tmp_path):
  workdir = str(tmp_path / "workdir")
  proc = start(workdir)
  read_progress(proc, lines)
  proc.kill()
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  steps = complete_steps(workdir)
  last = steps[-1] if steps else None
  if last is not None:
    params_at(workdir, last)  # the last complete checkpoint loads
  assert_resumes_to_reference(workdir, last, reference)


# The real CLI with its second checkpoint save held between writing the temporary directory
# and renaming it into place (the last moment a kill can leave a partial checkpoint): the save
# announces itself in the file argv[1] and waits there for the test's SIGKILL.
HELD_SAVE = """
import sys, time
from orbax.checkpoint._src.path import atomicity
from jaxrec import main

marker, finalize, calls = sys.argv.pop(1), atomicity.AtomicRenameTemporaryPath.finalize, []
async def held_finalize(self):
  if self._final_path.parent.name == "checkpoints":  # a step's directory, not an item inside it
    calls.append(self)
  if len(calls) == 2 and calls[-1] is self:
    open(marker, "w").write(str(self.get()))
    while True:
      time.sleep(1)
  await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = held_finalize
main.run()
"""


def test_sigkill_during_checkpoint_save(reference, tmp_path):
  """SIGKILLs training while its second save has written everything but not renamed it."""
  workdir, marker = str(tmp_path / "workdir"), str(tmp_path / "held")
  proc = subprocess.Popen([sys.executable, "-c", HELD_SAVE, marker, *command(workdir)[3:]], env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  held = wait_for(lambda: os.path.exists(marker) or proc.poll() is not None, 300)
  proc.kill()
  _, stderr = proc.communicate(timeout=60)
  assert held and os.path.exists(marker), "training never reached its second save:\n" + stderr
  in_flight = leftovers(workdir)
  assert proc.returncode == -signal.SIGKILL
  assert len(in_flight) == 1 and open(marker).read().endswith(in_flight[0])  # the held save is there ...
  last = complete_steps(workdir)[-1]
  assert last < int(in_flight[0].split(".")[0])  # ... and is not counted as a checkpoint
  params_at(workdir, last)
  assert_resumes_to_reference(workdir, last, reference)  # which also checks the leftover is gone


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_exits_cleanly(signum, reference, tmp_path):
  workdir = str(tmp_path / "workdir")
  proc = start(workdir)
  head = read_progress(proc, 10)
  proc.send_signal(signum)
  _, tail = proc.communicate(timeout=300)
  lines = ("".join(head) + tail).splitlines()
  assert proc.returncode == 128 + signum, tail
  assert "Traceback" not in tail
  match = re.fullmatch(rf"jaxrec: stopped by {signum.name} at step (\d+); checkpoint saved, rerun the "
                       r"same command to resume", lines[-1])
  assert match, lines[-1]
  assert all(INFO.match(line) for line in lines[:-1]), lines  # the one message, besides progress
  step = int(match.group(1))
  assert step < reference[1]
  assert complete_steps(workdir)[-1] == step
  assert leftovers(workdir) == []
  assert_resumes_to_reference(workdir, step, reference)


# The real CLI with a fault injected into the train step: its parameters turn NaN after step argv[1].
POISONED_STEP = """
import sys
import jax
import jax.numpy as jnp
from jaxrec import main, step

at, clean_step = int(sys.argv.pop(1)), step.train_step
def poisoned_step(state, *args, **kwargs):
  state, metrics = clean_step(state, *args, **kwargs)
  scale = jnp.where(state.step == at, jnp.nan, 1.0)
  return state.replace(params=jax.tree.map(lambda x: x * scale, state.params)), metrics
step.train_step = poisoned_step
main.run()
"""


@pytest.mark.parametrize("extra, poison_at, message", [
    (["--learning_rate=1e30"], None, r"loss is (nan|inf) at step {resumed_step_2}: training stopped"),
    ([], "{save_step}", r"parameters are not finite after step {save_step}: training stopped without saving them"),
], ids=["absurd_learning_rate", "nan_parameters_at_a_save"])
def test_non_finite_stops_and_keeps_the_last_checkpoint(extra, poison_at, message, reference, tmp_path):
  ref_workdir, final_step, ref_params = reference
  workdir = str(tmp_path / "workdir")
  shutil.copytree(ref_workdir, workdir)
  steps = complete_steps(workdir)
  # Resumed for one more epoch: non-finite one step after the resume, or at the first save.
  fill = dict(resumed_step_2=final_step + 2, save_step=(final_step // 4 + 1) * 4)
  if poison_at is None:
    result = train(workdir, "--num_epochs=6", "--allow_changed_flags=num_epochs,learning_rate", *extra)
  else:
    argv = [sys.executable, "-c", POISONED_STEP, poison_at.format(**fill), *command(workdir, "--num_epochs=6", "--allow_changed_flags=num_epochs")[3:]]
    result = subprocess.run(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            timeout=300)
  lines = result.stderr.splitlines()
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  assert re.match(r"jaxrec: error: " + message.format(**fill), lines[-1]), lines[-1]
  assert "the last checkpoint before it is intact" in lines[-1]
  assert all(INFO.match(line) for line in lines[:-1]), lines
  assert complete_steps(workdir) == steps
  assert leftovers(workdir) == []
  assert_same_params(params_at(workdir, final_step), ref_params)
