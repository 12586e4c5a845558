"""Training: the Trainer (mesh, jitted step, checkpoints) and the epoch loop with validation,
early stopping, preemption and the metrics log.

The batch is sharded along the `data` mesh axis over all devices (of all processes);
parameters and optimizer state are replicated. The loss is computed over the global
batch, so it equals the single-device loss. Batches come from `input_pipeline`, the
math of a step from `step`.
"""

import contextlib
import functools
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec import checkpoints
from jaxrec import console
from jaxrec import evaluate
from jaxrec import hosts
from jaxrec import input_pipeline
from jaxrec import saves
from jaxrec import step as step_lib
from jaxrec import warm_start
from jaxrec.holdout import Split
from jaxrec.errors import TrainingError, WriteError, cause
from jaxrec.fileio import atomic_open
from jaxrec.input_pipeline import Batch
from jaxrec.config import Config
from jaxrec.model import Seq2Seq
from jaxrec.run_log import EvalProgress, MetricsLog
from jaxrec.step import TrainState

PROGRESS_EVERY_S = 60  # a progress line at least this often, whatever --log_every_steps says


def data_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ("data",))


def to_global(batch: Batch, sharding: NamedSharding) -> Batch:
  """Host batch -> global arrays. Several processes: `batch` is this process's part (its data
  shards' batches, hosts.ShardedPlan), the global batch their concatenation in process order."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)  # one call for all arrays: half the time
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(
      sharding, v, (v.shape[0] * jax.process_count(),) + v.shape[1:]), batch)


class Trainer:
  """Owns the mesh, the batch plan, the jitted step and the checkpoint managers of one workdir."""

  def __init__(self, config: Config, split: Split, workdir: str, base_params=None):
    """`base_params`: a smaller model's parameters to start from (warm_start.graft)."""
    self.config, self.split, self.workdir = config, split, workdir
    self.base_params = base_params
    self.model = Seq2Seq(config.model)
    self.mesh = data_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    layout = dict(real_slots=config.loss.kind == "full", layout=config.batching.layout,
                  packable=config.model.encoder == "spec")
    with console.slow(f"planning the batches of {len(split.train_users)} training sequences"):
      if config.data_shards > 1 or jax.process_count() > 1:
        self.plan = hosts.ShardedPlan(split, config.batching.batch_size, config.model.seq_length,
                                      config.train.seed, config.data_shards, jax.local_device_count(),
                                      split.item_counts(), **layout)
      else:
        self.plan = input_pipeline.BatchPlan(
            split, config.batching.batch_size, config.model.seq_length, config.train.seed, jax.device_count(),
            config.batching.bucket_lengths, config.batching.short_length, **layout)
    self.train_users, self.rows = self.plan.train_users, self.plan.rows
    self.steps_per_epoch = self.plan.steps_per_epoch
    self.total_steps = self.steps_per_epoch * config.train.num_epochs
    self.tx, self.lr = step_lib.make_optimizer(config.optimizer, self.total_steps)
    if config.optimizer.sparse_embedding_updates:
      fn = functools.partial(step_lib.sparse_train_step, model=self.model, tx=self.tx, lr=self.lr,
                             b2=config.optimizer.b2, loss=config.loss)
    else:
      fn = functools.partial(step_lib.train_step, model=self.model, tx=self.tx, loss=config.loss)
    # (state, batch, item_log_q) -> (state, metrics); the state is donated.
    self.jitted_step = jax.jit(fn, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                               out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    # log(count/total) per item; items never clicked in training get a finite floor.
    self.item_log_q = jax.device_put(np.maximum(self.plan.sampler.log_q, -1e4), self.replicated)
    self.latest = checkpoints.manager(workdir, checkpoints.LATEST, config.train.checkpoint_every_steps,
                                      config.train.max_to_keep)
    self.best = checkpoints.manager(workdir, checkpoints.BEST, 1, 1)
    # Validation is collective with several processes: all validate if any holds a target.
    self.validates = bool(config.eval.eval_every_epochs) and bool(hosts.agree_max([split.has_holdout])[0])
    self.saver = saves.Saver(workdir, self.latest, self.best)

  def init_state(self) -> TrainState:
    def init(rng, base):
      adapt = None if base is None else functools.partial(warm_start.graft, base=base)
      return step_lib.init_state(self.model, self.tx, rng, self.config.optimizer.sparse_embedding_updates, adapt)
    # The base was restored onto one device; the init runs on the whole mesh.
    base = None if self.base_params is None else jax.device_put(jax.device_get(self.base_params), self.replicated)
    return jax.jit(init, out_shardings=self.replicated)(jax.random.key(self.config.train.seed), base)

  def abstract_state(self):
    shapes = jax.eval_shape(lambda: self.init_state())
    return checkpoints.abstract_like(shapes, self.replicated)

  def restore_or_init(self) -> TrainState:
    step = self.latest.latest_step()
    if step is None:
      return self.init_state()
    console.info("resuming from %s at step %d", self.latest.directory, step)
    return checkpoints.restore(self.latest, step, self.abstract_state())

  def close(self) -> None:
    self.saver.close()

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    return self.jitted_step(state, batch, self.item_log_q)

  def batch(self, epoch: int, index: int) -> tuple[Batch, int]:
    """(global batch, real rows) of step `index` of `epoch`."""
    host, rows = self.plan.batch(epoch, index)
    return to_global(host, self.batch_sharding), rows


class _StopSignal:
  """Remembers SIGTERM/SIGINT so the loop can checkpoint and exit between steps."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      self._old[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._old.items():
      signal.signal(s, handler)


class Preempted(Exception):
  """Training stopped by a signal after saving a checkpoint."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                     "checkpoint saved, rerun the same command to resume")
    self.exit_code = 128 + signum


def _check_finite(metrics_host: dict, step: int, params=None) -> None:
  """Stops training on a non-finite loss or gradient norm, or on non-finite `params` (checked before saving)."""
  for name in ("loss", "grad_norm"):
    if not math.isfinite(metrics_host[name]):
      raise TrainingError(f"{name} is {metrics_host[name]} at step {step}: training stopped; the last "
                          "checkpoint before it is intact (try a lower --learning_rate or --grad_clip_norm)")
  if params is not None and not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params)):
    raise TrainingError(f"parameters are not finite after step {step}: training stopped without saving "
                        "them; the last checkpoint before it is intact (try a lower --learning_rate or "
                        "--grad_clip_norm)")


def train_and_evaluate(config: Config, split: Split, workdir: str, run_info: dict | None = None,
                       base_params=None) -> dict:
  """Trains (resuming from the workdir's latest checkpoint), validates, tests the best state.

  At the end writes `summary.json` (`run_info`, e.g. flags and data, plus the best and
  final steps and their metrics) and then the `_SUCCESS` marker, each atomically; a run
  that does not finish leaves neither (a stale marker is removed first).
  `base_params` (a warm start) initialise a run that has no checkpoint yet.
  A write the machine fails (checkpoints, including their background saves, metrics,
  TensorBoard events) stops the run with a WriteError that says what is intact.
  Returns the final test metrics (or {} when validation is off).
  """
  trainer = log = None
  with saves.BackgroundFaults() as faults:
    try:
      if jax.process_index() == 0:
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(workdir, checkpoints.SUCCESS))
      trainer = Trainer(config, split, workdir, base_params)
      trainer.saver.faults = faults
      log = MetricsLog(workdir, enabled=jax.process_index() == 0)
      result, progress = _run(trainer, log)
      trainer.saver.settle()
      log.close()
      final_step = trainer.latest.latest_step()
      trainer.saver.close()
      if jax.process_index() == 0:
        summary = {**(run_info or {}), "run_id": log.run_id, "final_step": final_step,
                   "best": {"step": trainer.best.latest_step() if trainer.validates else None,
                            "epoch": progress.best_epoch if trainer.validates else None,
                            "select_metric": config.eval.select_metric, "valid": progress.best_metrics},
                   "test": result}
        with atomic_open(os.path.join(workdir, "summary.json")) as f:
          json.dump(summary, f, indent=1)
        with atomic_open(os.path.join(workdir, checkpoints.SUCCESS)) as f:
          f.write(log.run_id + "\n")
      return result
    except OSError as e:
      _close_quietly(trainer, log)
      where = e.filename or f"under {workdir}"
      raise WriteError(f"{cause(e)} writing {where}; {saves.intact(workdir)}") from None
    except BaseException:
      _close_quietly(trainer, log)
      raise


def _close_quietly(trainer, log) -> None:
  if log is not None:
    with contextlib.suppress(Exception):
      log.close()
  if trainer is not None:
    trainer.saver.close_quietly()


def _run(trainer: Trainer, log: MetricsLog):
  """(test metrics, validation progress) of training to the end from the latest checkpoint."""
  config, split = trainer.config, trainer.split
  state = trainer.restore_or_init()
  progress = EvalProgress.load(trainer.workdir)
  step = int(jax.device_get(state.step))
  console.info("%d training sequences, %d steps/epoch x %d epochs, global batch %d on %d device(s)",
               trainer.plan.num_sequences, trainer.steps_per_epoch, config.train.num_epochs, trainer.rows,
               jax.device_count())
  console.info("%s", trainer.plan.describe())
  epoch_done, into_epoch = divmod(step, trainer.steps_per_epoch)
  if (step and not into_epoch and trainer.validates and not progress.stopped
      and epoch_done % config.eval.eval_every_epochs == 0 and progress.validated_epoch < epoch_done):
    # Killed after the epoch-end checkpoint but before its validation was recorded.
    _validate(trainer, state, epoch_done, step, log, progress)
  with _StopSignal() as stop:
    state = _train_loop(trainer, state, step, log, progress, stop)
  trainer.saver.settle()
  result = {}
  if trainer.validates and trainer.best.latest_step() is not None:
    best_step = trainer.best.latest_step()
    best = checkpoints.restore(trainer.best, best_step, trainer.abstract_state())
    result = evaluate.evaluate(best.params, config.model, split, "test", config.eval.eval_ks,
                               config.eval.eval_batch_size)
    row = {"split": "test", "epoch": progress.best_epoch, "step": best_step, **result}
    log.record(row, "test/")
    evaluate.print_table(row)
  return result, progress


def _train_loop(trainer: Trainer, state, step: int, log: MetricsLog, progress, stop) -> TrainState:
  config = trainer.config
  interval_start, interval_rows, interval_steps = time.perf_counter(), 0, 0
  # The rate and ETA shown are the mean since the first step's metrics were read (the compilation
  # is behind then), validation time left out, so they settle instead of jumping; until then,
  # the first interval's own.
  since = None  # (time, step, rows) at that point
  first_step, total_rows, paused_s = step, 0, 0.0
  console.info("compiling the train step")
  last_line = None
  epoch_loss, epoch_steps = 0.0, 0
  pending = None  # (step, metrics) not yet read: read after the next step is dispatched

  def settle():
    """Reads the pending step's metrics (stopping on non-finite ones) and accounts its loss."""
    nonlocal pending, epoch_loss, epoch_steps
    host = _fetch(pending[1])
    _check_finite(host, pending[0])
    epoch_loss, epoch_steps, pending = epoch_loss + host["loss"], epoch_steps + 1, None
    return host

  while step < trainer.total_steps and not progress.stopped:
    epoch, start = divmod(step, trainer.steps_per_epoch)
    batches = input_pipeline.prefetch(trainer.plan.epoch(epoch, start), config.batching.prefetch)
    for index, (host_batch, rows) in enumerate(batches, start):
      state, metrics = trainer.train_step(state, to_global(host_batch, trainer.batch_sharding))
      step += 1
      if pending is not None:
        settle()
      pending = (step, metrics)
      interval_rows += rows
      interval_steps += 1
      total_rows += rows
      if since is None and step > first_step + 1:  # the first step's metrics were just read by settle()
        since = (time.perf_counter(), step - 1, total_rows - rows)
        console.info("first step done %.1f s after compiling began; progress every %d steps or %d s",
                     since[0] - interval_start, config.train.log_every_steps, PROGRESS_EVERY_S)
        last_line = since[0]
      end_of_epoch = index == trainer.steps_per_epoch - 1
      signum = stop.signum  # read once: a signal arriving after this is handled at the next step
      save = step % config.train.checkpoint_every_steps == 0 or end_of_epoch or signum
      logged = step % config.train.log_every_steps == 0 or save
      if logged or (since is not None and time.perf_counter() - last_line >= PROGRESS_EVERY_S):
        host = settle()  # also guarantees that the state about to be saved is finite
        now = last_line = time.perf_counter()
        elapsed, rows_done, steps_done = now - interval_start, interval_rows, interval_steps
        if since is not None and step > since[1]:
          elapsed, rows_done, steps_done = now - since[0] - paused_s, total_rows - since[2], step - since[1]
        speed = rows_done / max(elapsed, 1e-9)
        eta = (trainer.total_steps - step) * elapsed / max(steps_done, 1)
        console.info("epoch %d step %d/%d loss %.4f %.0f seq/s ETA %s", epoch + 1, step,
                     trainer.total_steps, host["loss"], speed, _hms(eta))
        if logged:  # the recorded scalars keep a fixed step cadence; the time-based lines only print
          log.scalars(step, {"loss": host["loss"], "learning_rate": float(trainer.lr(step - 1)),
                             "sequences_per_s": speed, "grad_norm": host["grad_norm"]}, "train/")
        interval_start, interval_rows, interval_steps = time.perf_counter(), 0, 0
      if save:
        _check_finite(host, step, state.params)
        trainer.saver.save(trainer.latest, step, state)
      else:
        trainer.saver.poll()
      if signum:
        trainer.saver.settle()
        raise Preempted(signum, step)
      if end_of_epoch:
        log.record({"split": "train", "epoch": epoch + 1, "step": step,
                    "loss": epoch_loss / max(epoch_steps, 1), "steps": epoch_steps}, "train/epoch_")
        epoch_loss, epoch_steps = 0.0, 0
        if trainer.validates and (epoch + 1) % config.eval.eval_every_epochs == 0:
          validated = time.perf_counter()
          _validate(trainer, state, epoch + 1, step, log, progress)
          interval_start = time.perf_counter()  # throughput counts training only
          paused_s += interval_start - validated
  return state


def _validate(trainer: Trainer, state, epoch: int, step: int, log: MetricsLog, progress) -> None:
  config = trainer.config
  result = evaluate.evaluate(state.params, config.model, trainer.split, "valid", config.eval.eval_ks,
                             config.eval.eval_batch_size)
  row = {"split": "valid", "epoch": epoch, "step": step, **result}
  log.record(row, "valid/")
  evaluate.print_table(row)
  progress.validated_epoch = epoch
  score = result[config.eval.select_metric]
  if score > progress.best_score:
    progress.best_score, progress.best_epoch, progress.bad_evals = score, epoch, 0
    progress.best_metrics = row
    trainer.saver.save(trainer.best, step, state)
  else:
    progress.bad_evals += 1
    if config.eval.patience and progress.bad_evals >= config.eval.patience:
      console.info("early stopping: no better validation %s for %d evaluations (best %.4f at "
                   "epoch %d)", config.eval.select_metric, progress.bad_evals, progress.best_score,
                   progress.best_epoch)
      progress.stopped = True
  trainer.saver.settle()
  progress.save()


def _fetch(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
