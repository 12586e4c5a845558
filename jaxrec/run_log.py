"""What a run records in its workdir besides checkpoints: metrics.jsonl (and TensorBoard), and
the validation progress that lets a resumed run stop as the uninterrupted one would."""

import contextlib
import dataclasses
import json
import os
import time
import uuid

import jax

from jaxrec.fileio import atomic_open


class MetricsLog:
  """Appends JSON lines to <workdir>/metrics.jsonl and mirrors scalars to TensorBoard.

  Every row carries this run's id and the wall time; a row for a step that an earlier run
  already recorded (steps recomputed after a resume) is marked `"repeated": true`.
  """

  def __init__(self, workdir: str, enabled: bool):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self.run_id = uuid.uuid4().hex[:12]
    self.writer = None
    self._recorded = {}  # split -> the last step earlier runs recorded for it
    if enabled:
      if os.path.exists(self.path):
        with open(self.path) as f:
          for line in f:
            with contextlib.suppress(ValueError, KeyError, TypeError):
              row = json.loads(line)
              self._recorded[row["split"]] = max(self._recorded.get(row["split"], -1), row["step"])
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

  def scalars(self, step: int, values: dict, prefix: str = "") -> None:
    if self.writer:
      for k, v in values.items():
        self.writer.add_scalar(prefix + k.replace("@", "_"), v, step)

  def record(self, row: dict, prefix: str) -> None:
    if not self.enabled:
      return
    row = {**row, "run_id": self.run_id, "time": round(time.time(), 3)}
    if row["step"] <= self._recorded.get(row["split"], -1):
      row["repeated"] = True
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    self.scalars(row["step"], {k: v for k, v in row.items() if isinstance(v, float) and k != "time"}, prefix)

  def close(self):
    if self.writer:
      writer, self.writer = self.writer, None
      event_writers = [w.event_writer for w in getattr(writer, "all_writers", {}).values()]
      try:
        writer.close()
      finally:
        for event_writer in event_writers:
          if not getattr(event_writer, "_closed", True):  # its close failed part-way (full disk)
            # Stop its worker thread now: left running, the interpreter's exit closes the
            # queue under it and the thread prints a traceback after the run has reported
            # the failure. Marked closed, tensorboardX's exit hook does not retry the flush.
            with contextlib.suppress(Exception):
              event_writer._worker.stop()
              event_writer._event_queue.close()
              event_writer._event_queue.join_thread()
            event_writer._closed = True


@dataclasses.dataclass
class EvalProgress:
  """Best validation score and patience counter, persisted so resumed runs stop alike."""
  path: str
  best_score: float = -1.0  # of EvalConfig.select_metric
  best_epoch: int = -1
  best_metrics: dict = dataclasses.field(default_factory=dict)
  bad_evals: int = 0
  stopped: bool = False
  validated_epoch: int = 0  # the last epoch whose validation was recorded

  @classmethod
  def load(cls, workdir):
    path = os.path.join(workdir, "eval_progress.json")
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      if "best_ndcg" in saved:  # written before --select_metric, which was then ndcg@10
        saved["best_score"] = saved.pop("best_ndcg")
      return cls(path, **saved)
    return cls(path)

  def save(self):
    if jax.process_index() == 0:
      with atomic_open(self.path) as f:
        json.dump({k: v for k, v in dataclasses.asdict(self).items() if k != "path"}, f)
