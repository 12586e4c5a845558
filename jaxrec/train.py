"""Training: optimizer, the sharded jit train step, the epoch loop with checkpoints and evaluation.

The batch is sharded along the `data` mesh axis over all devices (of all processes);
parameters and optimizer state are replicated. The loss is computed over the global
batch, so it equals the single-device loss.
"""

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec import checkpoints
from jaxrec import console
from jaxrec import data
from jaxrec import evaluate
from jaxrec import masks
from jaxrec.errors import TrainingError
from jaxrec.loss import full_softmax_loss, in_batch_softmax_loss
from jaxrec.model import ModelConfig, Seq2Seq, init_params


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which softmax the model is trained with (the SPEC's is the default)."""
  kind: str = "inbatch"  # inbatch (SPEC section 5) | mixed (inbatch + shared sampled items) | full
  remove_accidental_hits: bool = False  # drop candidates equal to the row's own label
  num_negatives: int = 0  # mixed: items sampled per step, shared by the whole batch
  negative_distribution: str = "uniform"  # mixed: uniform | popularity
  log_q: str = "standard"  # inbatch/mixed: standard (SPEC) | corrected (Khrylchenko et al. 2025)
  label_smoothing: float = 0.0  # full: share of the target spread evenly over the catalog


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything training needs besides the data; main builds it from flags."""
  model: ModelConfig
  batch_size: int = 198
  num_epochs: int = 10
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"  # constant | cosine (after warm-up)
  warmup_steps: int = 0
  weight_decay: float = 0.0
  grad_clip_norm: float = 0.0  # 0: no clipping
  adam_b2: float = 0.999
  seed: int = 0
  checkpoint_every_steps: int = 1000
  max_to_keep: int = 3
  log_every_steps: int = 50
  eval_every_epochs: int = 1  # 0: no validation
  eval_ks: tuple = (10, 20, 50)
  eval_batch_size: int = 1024
  patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
  bucket_lengths: tuple = ()  # padded lengths shorter than seq_length to batch short users at
  loss: LossConfig = LossConfig()
  sparse_embedding_updates: bool = False  # lazy Adam on the touched table rows only
  short_length: int = 0  # run each batch's short rows at this padded length (same batches, same loss)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def make_optimizer(config: TrainConfig, total_steps: int):
  """(optax transformation, learning-rate schedule): Adam(W), warm-up, optional clipping."""
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  if config.lr_schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(total_steps, warmup + 1))
  elif warmup:
    lr = optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup),
                               optax.constant_schedule(config.learning_rate)], [warmup])
  else:
    lr = optax.constant_schedule(config.learning_rate)
  adam = optax.adamw(lr, b2=config.adam_b2, weight_decay=config.weight_decay)
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam), lr
  return adam, lr


def sample_negatives(item_log_q_I, rng, loss: LossConfig, num_items: int):
  """--loss=mixed: (ids [N], logQ [N]) of N items shared by the batch.

  The logQ is the log of each item's expected count in the sample, N * q(item), as
  the in-batch candidates are corrected by B * p(item): the sources stay comparable.
  """
  n = loss.num_negatives
  if loss.negative_distribution == "popularity":
    cdf = jnp.cumsum(jnp.exp(item_log_q_I))
    ids = jnp.searchsorted(cdf, jax.random.uniform(rng, (n,)) * cdf[-1], side="right")
    ids = jnp.clip(ids, 1, num_items - 1)
    log_q = item_log_q_I[ids]
  else:
    ids = jax.random.randint(rng, (n,), 1, num_items)
    log_q = jnp.full((n,), -jnp.log(num_items - 1.0))
  return ids, log_q + jnp.log(float(n))


def loss_fn(params, model: Seq2Seq, batch: dict, dropout_rng=None, loss: LossConfig = LossConfig(),
            negatives=None, sparse=None):
  """The training loss of `batch`.

  `negatives`: (ids [N], logQ [N]) for --loss=mixed. `sparse`: (rows [K], {table name:
  gathered rows [K, D]}) standing in for the item tables, which are then not read.
  """
  variables = {"params": params}
  in_name, out_name = model.table_names()
  if sparse is None:
    table = model.apply(variables, method=Seq2Seq.output_table)
    lookup_in = lambda ids: None  # the model looks items up itself
    lookup = lambda ids: jnp.take(table, ids, axis=0)
  else:
    rows_K, tables = sparse
    local = lambda ids: jnp.searchsorted(rows_K, ids)
    lookup_in = lambda ids: jnp.take(tables[in_name], local(ids), axis=0)
    lookup = lambda ids: jnp.take(tables[out_name], local(ids), axis=0)

  def encode(ids_BxL, rng):
    return model.apply(variables, ids_BxL, rng is None, lookup_in(ids_BxL),
                       rngs=None if rng is None else {"dropout": rng}, method=Seq2Seq.encode)

  if "order" in batch:  # split by length (data.split_by_length): two encoder runs, rows restored
    rngs = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    short_BxSxD, long_BxLxD = encode(batch["short_ids"], rngs[0]), encode(batch["long_ids"], rngs[1])
    pad = long_BxLxD.shape[1] - short_BxSxD.shape[1]
    sorted_BxLxD = jnp.concatenate([jnp.pad(short_BxSxD, ((0, 0), (pad, 0), (0, 0))), long_BxLxD])
    seq_out = sorted_BxLxD[jnp.argsort(batch["order"])]
  else:
    seq_out = encode(batch["input_ids"], dropout_rng)
  padding = masks.padding_mask(batch["input_ids"])
  if loss.kind == "full":
    return full_softmax_loss(seq_out, table, batch["label"], padding, batch["row_mask"], batch.get("slots"),
                             loss.label_smoothing)
  hot_weight, extra = batch["hot_weight"], {}
  if loss.kind == "mixed":
    ids, log_q = negatives
    extra = {"extra_emb_NxD": lookup(ids), "extra_ids_N": ids, "extra_log_q_N": log_q}
    hot_weight = hot_weight + jnp.log(jnp.float32(batch["label"].shape[0]))  # log(B p)
  if loss.log_q == "corrected":
    extra["pos_log_q_BxL"] = batch["hot_weight"]
  return in_batch_softmax_loss(seq_out, lookup(batch["label"]), hot_weight, padding, batch["row_mask"],
                               batch["label"], loss.remove_accidental_hits, **extra)


def train_step(state: TrainState, batch: dict, item_log_q_I, *, model: Seq2Seq, tx,
               loss: LossConfig = LossConfig()) -> tuple[TrainState, dict]:
  """One Adam step on the global batch; the dropout key is fold_in(rng, step)."""
  dropout_rng, sample_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  negatives = None
  if loss.kind == "mixed":
    negatives = sample_negatives(item_log_q_I, sample_rng, loss, model.config.num_items)
  loss_value, grads = jax.value_and_grad(loss_fn)(state.params, model, batch, dropout_rng, loss, negatives)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {"loss": loss_value, "grad_norm": optax.tree.norm(grads)}


def sparse_train_step(state: TrainState, batch: dict, item_log_q_I, *, model: Seq2Seq, tx, lr,
                      b2: float, loss: LossConfig = LossConfig(), b1: float = 0.9,
                      eps: float = 1e-8) -> tuple[TrainState, dict]:
  """train_step with row-sparse ("lazy") Adam on the item tables.

  Only the table rows the batch touches (inputs, labels, sampled negatives) are
  gathered, differentiated and updated, with their own Adam moments; other rows and
  their moments stay as they are. The cost per step no longer grows with the catalog.
  `tx` updates the other (dense) parameters; its state is opt_state[0].
  """
  dropout_rng, sample_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  num_items = model.config.num_items
  negatives, ids = None, [batch["input_ids"].ravel(), batch["label"].ravel()]
  if loss.kind == "mixed":
    negatives = sample_negatives(item_log_q_I, sample_rng, loss, num_items)
    ids.append(negatives[0])
  ids = jnp.concatenate(ids)
  rows_K = jnp.unique(ids, size=ids.shape[0], fill_value=num_items)  # fill rows are dropped below
  names = tuple(sorted(set(model.table_names())))
  tables = {n: state.params[n]["embedding"] for n in names}
  rows = {n: tables[n].at[rows_K].get(mode="fill", fill_value=0.0) for n in names}
  dense = {k: v for k, v in state.params.items() if k not in names}

  def objective(dense, rows):
    params = {**dense, **{n: {"embedding": jax.lax.stop_gradient(tables[n])} for n in names}}
    return loss_fn(params, model, batch, dropout_rng, loss, negatives, (rows_K, rows))

  loss_value, (dense_grads, row_grads) = jax.value_and_grad(objective, argnums=(0, 1))(dense, rows)
  dense_opt, moments = state.opt_state
  updates, dense_opt = tx.update(dense_grads, dense_opt, dense)
  params = dict(optax.apply_updates(dense, updates))
  t = (state.step + 1).astype(jnp.float32)
  lr_t = lr(state.step)
  new_moments = {}
  for n in names:
    m, v = moments[n]
    g = row_grads[n]
    m_K = b1 * m.at[rows_K].get(mode="fill", fill_value=0.0) + (1 - b1) * g
    v_K = b2 * v.at[rows_K].get(mode="fill", fill_value=0.0) + (1 - b2) * g * g
    step_K = lr_t * (m_K / (1 - b1**t)) / (jnp.sqrt(v_K / (1 - b2**t)) + eps)
    params[n] = {"embedding": tables[n].at[rows_K].set(rows[n] - step_K, mode="drop")}
    new_moments[n] = (m.at[rows_K].set(m_K, mode="drop"), v.at[rows_K].set(v_K, mode="drop"))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=(dense_opt, new_moments))
  grad_norm = optax.tree.norm((dense_grads, row_grads))
  return new_state, {"loss": loss_value, "grad_norm": grad_norm}


def data_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ("data",))


def padded_batch_size(batch_size: int, num_devices: int) -> int:
  """Rows per global batch: batch_size rounded up to a multiple of the device count."""
  return -(-batch_size // num_devices) * num_devices


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Host batch -> global arrays; each process sends only the rows of its own devices."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)  # one call for all arrays: half the time
  def local(v):
    per_process = v.shape[0] // jax.process_count()
    return v[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
  return {k: jax.make_array_from_process_local_data(sharding, local(v), v.shape) for k, v in batch.items()}


class Trainer:
  """Owns the mesh, the jitted step and the checkpoint managers of one workdir."""

  def __init__(self, config: TrainConfig, split: data.Split, workdir: str):
    self.config, self.split, self.workdir = config, split, workdir
    self.model = Seq2Seq(config.model)
    self.mesh = data_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.train_users = split.train_users
    if len(self.train_users) == 0:
      raise TrainingError("no user has 2 or more training clicks: nothing to train on")
    # Rows are grouped by input length into buckets, each run at its own padded length
    # (exact: outputs at real positions do not depend on padding).
    self.bucket_lengths = tuple(sorted({b for b in config.bucket_lengths if b < config.model.seq_length}
                                       | {config.model.seq_length}))
    input_lengths = np.minimum(split.train_end[self.train_users] - split.log.indptr[self.train_users] - 1,
                               config.model.seq_length)
    self.bucket_R = data.bucket_of(input_lengths, self.bucket_lengths)
    self.rows = padded_batch_size(config.batch_size, jax.device_count())
    self.long_rows = 0
    if config.short_length:
      # Room for the rows longer than short_length in nearly every batch (mean + 4 sd);
      # a batch with more runs its short group at full length instead.
      p = float(np.mean(input_lengths > config.short_length))
      expected = config.batch_size * p + 4 * np.sqrt(config.batch_size * p * (1 - p)) + 1
      devices = jax.device_count()
      self.long_rows = int(min(self.rows - devices, -(-int(np.ceil(expected)) // devices) * devices))
    counts = np.bincount(self.bucket_R, minlength=len(self.bucket_lengths))
    self.steps_per_epoch = int(sum(-(-c // config.batch_size) for c in counts))
    self._epoch_batches = (None, None)
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.sampler = data.PopularitySampler(split.item_counts())
    self.tx, self.lr = make_optimizer(config, self.total_steps)
    if config.sparse_embedding_updates:
      step = functools.partial(sparse_train_step, model=self.model, tx=self.tx, lr=self.lr,
                               b2=config.adam_b2, loss=config.loss)
    else:
      step = functools.partial(train_step, model=self.model, tx=self.tx, loss=config.loss)
    jitted = jax.jit(step, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                     out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    # log(count/total) per item; items never clicked in training get a finite floor.
    self.item_log_q = jax.device_put(np.maximum(self.sampler.log_q, -1e4), self.replicated)
    self.jitted_step = jitted  # (state, batch, item_log_q) -> (state, metrics)
    self.train_step = lambda state, batch: jitted(state, batch, self.item_log_q)
    self.latest = checkpoints.manager(workdir, checkpoints.LATEST, config.checkpoint_every_steps,
                                      config.max_to_keep)
    self.best = checkpoints.manager(workdir, checkpoints.BEST, 1, 1)

  def init_state(self) -> TrainState:
    def init(rng):
      params_rng, dropout_rng = jax.random.split(rng)
      params = init_params(self.config.model, params_rng)
      if not self.config.sparse_embedding_updates:
        return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params), dropout_rng)
      names = set(self.model.table_names())
      dense = {k: v for k, v in params.items() if k not in names}
      moments = {n: (jnp.zeros_like(params[n]["embedding"]),) * 2 for n in names}
      return TrainState(jnp.zeros((), jnp.int32), params, (self.tx.init(dense), moments), dropout_rng)
    return jax.jit(init, out_shardings=self.replicated)(jax.random.key(self.config.seed))

  def abstract_state(self):
    shapes = jax.eval_shape(lambda: self.init_state())
    return checkpoints.abstract_like(shapes, self.replicated)

  def restore_or_init(self) -> TrainState:
    step = self.latest.latest_step()
    if step is None:
      return self.init_state()
    console.info("resuming from %s at step %d", self.latest.directory, step)
    return checkpoints.restore(self.latest, step, self.abstract_state())

  def batch(self, epoch: int, index: int) -> tuple[dict, int]:
    """(global batch, real rows) of step `index` of `epoch`."""
    if self._epoch_batches[0] != epoch:
      self._epoch_batches = (epoch, data.epoch_batches(self.bucket_R, len(self.bucket_lengths),
                                                       self.config.batch_size, self.config.seed, epoch))
    rows = self._epoch_batches[1][index]
    length = self.bucket_lengths[self.bucket_R[rows[0]]]
    host = data.train_batch(self.split, self.sampler, self.train_users[rows], self.rows, length,
                            self.config.seed, epoch, index)
    if self.config.loss.kind == "full":  # score the catalog only at real slots
      host["slots"] = data.real_slots(host, jax.device_count())
    if self.long_rows:
      host = data.split_by_length(host, self.config.short_length, self.long_rows)
    return to_global(host, self.batch_sharding), len(rows)


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


class MetricsLog:
  """Appends JSON lines to <workdir>/metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self.writer = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

  def scalars(self, step: int, values: dict, prefix: str = "") -> None:
    if self.writer:
      for k, v in values.items():
        self.writer.add_scalar(prefix + k.replace("@", "_"), v, step)

  def record(self, row: dict, prefix: str) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    self.scalars(row["step"], {k: v for k, v in row.items() if isinstance(v, float)}, prefix)

  def close(self):
    if self.writer:
      self.writer.close()


def train_and_evaluate(config: TrainConfig, split: data.Split, workdir: str) -> dict:
  """Trains (resuming from the workdir's latest checkpoint), validates, tests the best state.

  Returns the final test metrics (or {} when validation is off).
  """
  trainer = Trainer(config, split, workdir)
  log = MetricsLog(workdir, enabled=jax.process_index() == 0)
  state = trainer.restore_or_init()
  progress = _EvalProgress.load(workdir)
  step = int(jax.device_get(state.step))
  console.info("%d training sequences, %d steps/epoch x %d epochs, global batch %d on %d device(s)",
               len(trainer.train_users), trainer.steps_per_epoch, config.num_epochs, trainer.rows,
               jax.device_count())
  epoch_done, into_epoch = divmod(step, trainer.steps_per_epoch)
  if (step and not into_epoch and config.eval_every_epochs and not progress.stopped
      and epoch_done % config.eval_every_epochs == 0 and progress.validated_epoch < epoch_done):
    # Killed after the epoch-end checkpoint but before its validation was recorded.
    _validate(trainer, state, epoch_done, step, log, progress)
  try:
    with _StopSignal() as stop:
      state = _train_loop(trainer, state, step, log, progress, stop)
  finally:
    trainer.latest.wait_until_finished()
    trainer.best.wait_until_finished()
    log.close()
  result = {}
  if config.eval_every_epochs and trainer.best.latest_step() is not None:
    best_step = trainer.best.latest_step()
    best = checkpoints.restore(trainer.best, best_step, trainer.abstract_state())
    result = evaluate.evaluate(best.params, config.model, split, "test", config.eval_ks,
                               config.eval_batch_size)
    row = {"split": "test", "epoch": progress.best_epoch, "step": best_step, **result}
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    log.record(row, "test/")
    log.close()
    evaluate.print_table(row)
  trainer.latest.close()
  trainer.best.close()
  return result


@dataclasses.dataclass
class _EvalProgress:
  """Best validation score and patience counter, persisted so resumed runs stop alike."""
  path: str
  best_ndcg: float = -1.0
  best_epoch: int = -1
  bad_evals: int = 0
  stopped: bool = False
  validated_epoch: int = 0  # the last epoch whose validation was recorded

  @classmethod
  def load(cls, workdir):
    path = os.path.join(workdir, "eval_progress.json")
    if os.path.exists(path):
      with open(path) as f:
        return cls(path, **json.load(f))
    return cls(path)

  def save(self):
    from jaxrec.fileio import atomic_open
    if jax.process_index() == 0:
      with atomic_open(self.path) as f:
        json.dump({k: v for k, v in dataclasses.asdict(self).items() if k != "path"}, f)


def _train_loop(trainer: Trainer, state, step: int, log: MetricsLog, progress, stop) -> TrainState:
  config = trainer.config
  interval_start, interval_rows, interval_steps = time.perf_counter(), 0, 0
  epoch_loss, epoch_steps = 0.0, 0
  pending = None  # (step, metrics) not yet read: read after the next step is dispatched
  # Fault injection for tests/crash_test.py: the parameters turn NaN after this step.
  nan_at_step = int(os.environ.get("JAXREC_TEST_NAN_AT_STEP", "-1"))

  def settle():
    """Reads the pending step's metrics (stopping on non-finite ones) and accounts its loss."""
    nonlocal pending, epoch_loss, epoch_steps
    host = _fetch(pending[1])
    _check_finite(host, pending[0])
    epoch_loss, epoch_steps, pending = epoch_loss + host["loss"], epoch_steps + 1, None
    return host

  while step < trainer.total_steps and not progress.stopped:
    epoch, index = divmod(step, trainer.steps_per_epoch)
    batch, rows = trainer.batch(epoch, index)
    state, metrics = trainer.train_step(state, batch)
    step += 1
    if step == nan_at_step:
      state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
    if pending is not None:
      settle()
    pending = (step, metrics)
    interval_rows += rows
    interval_steps += 1
    end_of_epoch = index == trainer.steps_per_epoch - 1
    signum = stop.signum  # read once: a signal arriving after this is handled at the next step
    save = step % config.checkpoint_every_steps == 0 or end_of_epoch or signum
    if step % config.log_every_steps == 0 or save:
      host = settle()  # also guarantees that the state about to be saved is finite
      elapsed = time.perf_counter() - interval_start
      speed = interval_rows / max(elapsed, 1e-9)
      eta = (trainer.total_steps - step) * elapsed / max(interval_steps, 1)
      console.info("epoch %d step %d/%d loss %.4f %.0f seq/s ETA %s", epoch + 1, step,
                   trainer.total_steps, host["loss"], speed, _hms(eta))
      log.scalars(step, {"loss": host["loss"], "learning_rate": float(trainer.lr(step - 1)),
                         "sequences_per_s": speed, "grad_norm": host["grad_norm"]}, "train/")
      interval_start, interval_rows, interval_steps = time.perf_counter(), 0, 0
    if save:
      _check_finite(host, step, state.params)
      checkpoints.save(trainer.latest, step, state, force=True)
    if signum:
      trainer.latest.wait_until_finished()
      raise Preempted(signum, step)
    if end_of_epoch:
      log.record({"split": "train", "epoch": epoch + 1, "step": step,
                  "loss": epoch_loss / max(epoch_steps, 1), "steps": epoch_steps}, "train/epoch_")
      epoch_loss, epoch_steps = 0.0, 0
      if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0:
        _validate(trainer, state, epoch + 1, step, log, progress)
        interval_start = time.perf_counter()  # throughput counts training only
  return state


def _validate(trainer: Trainer, state, epoch: int, step: int, log: MetricsLog, progress) -> None:
  config = trainer.config
  result = evaluate.evaluate(state.params, config.model, trainer.split, "valid", config.eval_ks,
                             config.eval_batch_size)
  row = {"split": "valid", "epoch": epoch, "step": step, **result}
  log.record(row, "valid/")
  evaluate.print_table(row)
  progress.validated_epoch = epoch
  if result["ndcg@10"] > progress.best_ndcg:
    progress.best_ndcg, progress.best_epoch, progress.bad_evals = result["ndcg@10"], epoch, 0
    checkpoints.save(trainer.best, step, state, force=True)
  else:
    progress.bad_evals += 1
    if config.patience and progress.bad_evals >= config.patience:
      console.info("early stopping: no better validation NDCG@10 for %d evaluations (best %.4f at "
                   "epoch %d)", progress.bad_evals, progress.best_ndcg, progress.best_epoch)
      progress.stopped = True
  trainer.best.wait_until_finished()
  progress.save()


def _fetch(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
