"""Faults of the machine, not of the input, against the real CLI: a full disk, a removed
workdir, a read-only file system and a write that raises each end the run with one line
and exit 74, leave the last complete checkpoint intact, and the rerun resumes bit-identically.

Full disks and read-only file systems are small tmpfs and bind mounts (root only; skipped
where mounting is not allowed).
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from deadlines import wait_for
from jaxrec import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = ("--data_format=synthetic --synthetic_users=300 --synthetic_items=100 --hidden_size=32 "
         "--num_hidden_layers=1 --seq_length=10 --batch_size=32 --eval_every_epochs=0 "
         "--checkpoint_every_steps=4 --log_every_steps=1").split()
INFO = re.compile(r"^\d\d:\d\d:\d\d ")


def env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(*args, module="jaxrec.main", code=None):
  argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", module, *args]
  return subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=300)


def one_error_line(result, pattern: str) -> re.Match:
  """Exit 74; stderr is progress lines and one error line matching `pattern`; no traceback."""
  assert result.returncode == 74, result.stderr
  assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert all(INFO.match(line) for line in lines[:-1]), lines
  match = re.fullmatch(pattern, lines[-1])
  assert match, lines[-1]
  return match


@contextlib.contextmanager
def mounted(target, *options):
  os.makedirs(target, exist_ok=True)
  result = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"cannot mount here: {result.stderr.strip()}")
  try:
    yield str(target)
  finally:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(directory, leave_kib: int):
  """Fills the file system of `directory` but `leave_kib`."""
  free_kib = shutil.disk_usage(directory).free // 1024
  with open(os.path.join(directory, "filler"), "wb") as f:
    f.write(b"\0" * max(free_kib - leave_kib, 0) * 1024)


def params(workdir):
  mgr = checkpoints.manager(workdir, writer=False)
  return mgr.latest_step(), jax.device_get(checkpoints.restore_params(mgr, mgr.latest_step()))


def assert_same(a, b):
  assert a[0] == b[0]
  for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1]), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference") / "wd")
  assert run(*FLAGS, "--num_epochs=5", f"--workdir={workdir}").returncode == 0
  return params(workdir)


@contextlib.contextmanager
def busy_cpu(loaded: bool):
  """A CPU-bound process beside the test, or nothing: under load, Orbax's background threads
  outlived the error line and the interpreter's teardown printed 28 asyncio tracebacks."""
  burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
  try:
    yield
  finally:
    if burner:
      burner.kill()
      burner.wait()


@pytest.mark.parametrize("loaded", [False, True], ids=["quiet", "beside_a_busy_process"])
def test_full_disk_during_training_reports_once_and_the_rerun_resumes(reference, tmp_path, loaded):
  with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as disk, busy_cpu(loaded):
    workdir = os.path.join(disk, "wd")
    assert run(*FLAGS, "--num_epochs=2", f"--workdir={workdir}").returncode == 0
    steps = sorted(checkpoints.manager(workdir, writer=False).all_steps())
    fill(disk, leave_kib=100)  # room for small files, not for a checkpoint
    more = [*FLAGS, "--num_epochs=5", "--allow_changed_flags=num_epochs", f"--workdir={workdir}"]
    match = one_error_line(run(*more), rf"jaxrec: error: no space left on device writing checkpoint (\d+) under "
                                       rf"{workdir}/checkpoints; the last complete checkpoint is step "
                                       rf"{steps[-1]}: clear the cause and rerun to resume")
    assert int(match.group(1)) > steps[-1]
    assert sorted(checkpoints.manager(workdir, writer=False).all_steps()) == steps  # nothing lost
    os.remove(os.path.join(disk, "filler"))
    result = run(*more)
    assert result.returncode == 0, result.stderr
    assert_same(params(workdir), reference)


def test_full_disk_during_export_writes_nothing(reference, tmp_path):
  workdir = str(tmp_path / "wd")
  assert run(*FLAGS, "--num_epochs=1", f"--workdir={workdir}").returncode == 0
  with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
    fill(disk, leave_kib=8)
    out = os.path.join(disk, "e.npz")
    one_error_line(run(*FLAGS, f"--workdir={workdir}", "--mode=export", f"--output={out}"),
                   rf"jaxrec: error: no space left on device writing {out}; nothing was written there")
    assert os.listdir(disk) == ["filler"]


def test_read_only_output_for_export_and_recall(tmp_path):
  workdir = str(tmp_path / "wd")
  assert run(*FLAGS, "--num_epochs=1", f"--workdir={workdir}").returncode == 0
  assert run(*FLAGS, f"--workdir={workdir}", "--mode=export").returncode == 0
  target = tmp_path / "ro"
  target.mkdir()
  with mounted(target, "--bind", str(target)):
    remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], capture_output=True, text=True)
    if remount.returncode:
      pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
    # Export checks its output directory before any work: refused up front, as bad input.
    result = run(*FLAGS, f"--workdir={workdir}", "--mode=export", f"--output={target}/e.npz")
    assert result.returncode == 2 and result.stderr.strip().endswith(f"directory {target} is not writable")
    result = run(f"--embeddings={workdir}/embeddings.npz", f"--output={target}/r.tsv", module="jaxrec.recall")
    one_error_line(result, rf"jaxrec.recall: error: read-only file system writing {target}/r.tsv; nothing was "
                           r"written there")
    assert os.listdir(target) == []


def test_workdir_removed_mid_run(tmp_path):
  workdir = str(tmp_path / "wd")
  proc = subprocess.Popen([sys.executable, "-m", "jaxrec.main", *FLAGS, "--num_epochs=1000",
                           f"--workdir={workdir}"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  seen = []
  while len(seen) < 30:  # well into training: checkpoints written
    line = proc.stderr.readline()
    assert line, "".join(seen)
    seen.append(line)
  os.rename(workdir, workdir + ".gone")  # at once, unlike a recursive delete racing the writer
  shutil.rmtree(workdir + ".gone")
  _, rest = proc.communicate(timeout=120)
  result = subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(seen) + rest)
  one_error_line(result, rf"jaxrec: error: the workdir {workdir} was removed during the run: its checkpoints "
                         r"are gone with it; rerun to start again")


# The real CLI with eval_progress.json's write failing as a denied permission would.
DENIED = """
import errno, sys
from jaxrec import fileio, main
real = fileio.atomic_path
def denied(path, *args, **kwargs):
  if path.endswith("eval_progress.json"):
    raise PermissionError(errno.EACCES, "Permission denied", path)
  return real(path, *args, **kwargs)
fileio.atomic_path = denied
main.run()
"""


def test_a_write_that_raises_keeps_the_last_checkpoint(tmp_path):
  workdir = str(tmp_path / "wd")
  flags = [*FLAGS, "--eval_every_epochs=1", "--num_epochs=3", f"--workdir={workdir}"]
  match = one_error_line(run(*flags, code=DENIED), rf"jaxrec: error: permission denied writing "
                         rf"{workdir}/eval_progress.json; the last complete checkpoint is step (\d+): clear the "
                         r"cause and rerun to resume")
  assert int(match.group(1)) in checkpoints.manager(workdir, writer=False).all_steps()
  result = run(*flags)
  assert result.returncode == 0, result.stderr
  reference = str(tmp_path / "ref")
  assert run(*FLAGS, "--eval_every_epochs=1", "--num_epochs=3", f"--workdir={reference}").returncode == 0
  assert_same(params(workdir), params(reference))


def test_metrics_log_close_on_a_full_disk_stops_tensorboards_thread(tmp_path):
  """A close that fails (the event file cannot be flushed) still stops tensorboardX's
  worker thread: left running, the interpreter's exit pulls its queue away and the thread
  prints a traceback after the run has reported the failure on one line."""
  import threading

  from jaxrec.run_log import MetricsLog
  with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
    before = set(threading.enumerate())
    log = MetricsLog(disk, enabled=True)
    queue = log.writer.file_writer.event_writer._event_queue
    log.scalars(0, {"loss": 1.0})
    assert wait_for(queue.empty, 60)  # the worker took the event (into the file's buffer)
    fill(disk, leave_kib=0)
    log.scalars(1, {"loss": 1.0})  # ... and this one, which cannot be flushed, is pending too
    with pytest.raises(OSError):
      log.close()
    assert set(threading.enumerate()) <= before
