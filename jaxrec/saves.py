"""Checkpoint saves that fail loudly and once.

Orbax saves in background threads; a save that fails there (a full disk, a removed
directory) would otherwise print tracebacks from those threads and let training run on
without the checkpoints it believes it has. `Saver` notices such a failure at the next
step, and a workdir removed or replaced under the run, and raises one WriteError that
names the path, the cause and the last complete checkpoint.
"""

import contextlib
import logging
import os
import threading

from jaxrec import checkpoints
from jaxrec.errors import WriteError, cause, known_cause


class BackgroundFaults:
  """Catches what dies in a background thread (Orbax's saves, TensorBoard's writer) so the
  loop can stop on it with one line, instead of the threads printing tracebacks; drops
  Orbax's own warnings and error logs meanwhile (a failed write is reported once, by the
  WriteError)."""

  def __init__(self):
    self.error = None

  def _hook(self, args):
    if known_cause(args.exc_value) is None:
      self._old_hook(args)  # not a failed write: a bug, shown as Python shows it
    elif self.error is None:
      self.error = args.exc_value

  def __enter__(self):
    self._old_hook, threading.excepthook = threading.excepthook, self._hook
    self._filter = lambda record: not ("/orbax/" in record.pathname and record.levelno >= logging.WARNING)
    logging.getLogger("absl").addFilter(self._filter)
    return self

  def __exit__(self, *exc):
    logging.getLogger("absl").removeFilter(self._filter)
    old = self._old_hook
    # Writer threads that die of the write failure already reported stay quiet; others not.
    threading.excepthook = lambda args: None if known_cause(args.exc_value) else old(args)


class Saver:
  """The run's `latest` and `best` checkpoint managers, saved to and watched."""

  def __init__(self, workdir: str, latest, best):
    self.workdir, self.latest, self.best = workdir, latest, best
    self.saving = {}  # checkpoint directory -> the step of its last save (for messages)
    self.faults = None  # the run's BackgroundFaults, if any
    # Held open: a removed workdir then shows st_nlink 0, and its inode cannot be reused.
    self._workdir_fd = os.open(workdir, os.O_RDONLY)

  def save(self, mgr, step: int, state) -> None:
    self.settle()  # Orbax waits for the previous save anyway; a failure is named after it
    try:
      checkpoints.save(mgr, step, state, force=True)
    except Exception as e:  # Orbax raises what its storage layer raised
      raise self._fault(mgr, step, e) from None
    self.saving[mgr.directory] = step

  def poll(self) -> None:
    """Raises a WriteError for a background save or write that failed, or for a workdir that
    was removed or replaced (Orbax would quietly make a new, empty one); never blocks."""
    self._check_workdir()
    for mgr in (self.latest, self.best):
      if not mgr.is_saving_in_progress():
        try:
          mgr.wait_until_finished()  # returns at once; raises what the finished save raised
        except Exception as e:  # noqa: BLE001
          raise self._fault(mgr, self.saving.get(mgr.directory), e) from None
    if self.faults is not None and self.faults.error is not None:
      raise WriteError(f"{cause(self.faults.error)} writing TensorBoard events under "
                       f"{os.path.join(self.workdir, 'tensorboard')}; {intact(self.workdir)}")

  def settle(self) -> None:
    """Waits for the saves in flight; raises a WriteError if one failed."""
    for mgr in (self.latest, self.best):
      try:
        mgr.wait_until_finished()
      except Exception as e:  # noqa: BLE001
        raise self._fault(mgr, self.saving.get(mgr.directory), e) from None
    self.poll()

  def close(self) -> None:
    self.latest.close()
    self.best.close()
    if self._workdir_fd is not None:
      os.close(self._workdir_fd)
      self._workdir_fd = None

  def close_quietly(self) -> None:
    """Shuts the checkpoint threads down on a failed run without more noise."""
    for close in (self.latest.wait_until_finished, self.best.wait_until_finished, self.close):
      with contextlib.suppress(Exception):
        close()

  def _check_workdir(self) -> None:
    if self._workdir_fd is None:
      return
    held = os.fstat(self._workdir_fd)
    try:
      same = held.st_nlink > 0 and os.stat(self.workdir).st_ino == held.st_ino
    except OSError:
      same = False
    if not same:
      raise WriteError(f"the workdir {self.workdir} was removed during the run: its checkpoints are gone "
                       "with it; rerun to start again")

  def _fault(self, mgr, step, e: BaseException) -> WriteError:
    try:
      self._check_workdir()
    except WriteError as vanished:
      return vanished
    which = f"checkpoint {step}" if step is not None else "a checkpoint"
    return WriteError(f"{cause(e)} writing {which} under {mgr.directory}; {intact(self.workdir)}")


def intact(workdir: str) -> str:
  """What a rerun resumes from, read afresh from disk."""
  try:
    steps = checkpoints.manager(workdir, checkpoints.LATEST, writer=False).all_steps()
  except Exception:  # noqa: BLE001 (the directory itself may be gone)
    steps = []
  if steps:
    return f"the last complete checkpoint is step {max(steps)}: clear the cause and rerun to resume"
  return "no complete checkpoint is left: clear the cause and rerun to start again"
