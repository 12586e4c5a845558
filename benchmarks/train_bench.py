"""Training throughput: the real data at SPEC sizes, synthetic sweeps, FLOP/s against the ceiling.

  python -m benchmarks.train_bench --data_path=../shared/data/beauty_s3rec.txt
  python -m benchmarks.train_bench --quick  # tiny sizes, a smoke test (about a minute)
  python -m benchmarks.train_bench --sections=losses --section_name=train_losses  # per loss
  python -m benchmarks.train_bench --sections=whole,real --section_name=train_real  # as a user times it

Every measurement runs in its own process (its own compile cache and peak RSS); the
child prints one JSON line and the parent collects them. The `whole` section times the
command line itself, whole processes of 1 and N epochs, as a user would. The ceilings (XLA float32
matmul, numpy copy) are measured in the same run. Steps are driven with
`Trainer.batch` and `Trainer.train_step`, exactly as the training loop does, with
evaluation and checkpoints off. Run on a quiet machine: XLA's intra-op threads slow
down sharply when another process keeps a core busy.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PLOT = os.path.join(REPO, "benchmarks", "train_throughput.png")

FLAGS = flags.FLAGS
flags.DEFINE_string("data_path", "../shared/data/beauty_s3rec.txt", "Real click log (one user per line).")
flags.DEFINE_bool("quick", False, "Tiny sizes and few steps: a smoke test, not a benchmark.")
flags.DEFINE_string("markdown_out", None, "File whose `train` section gets the tables; '' writes none. "
                    "Default: BENCHMARKS.md, or none with --quick.")
flags.DEFINE_string("plot_out", None, "PNG of the sweeps; '' draws none. Default: "
                    "benchmarks/train_throughput.png, or none with --quick.")
flags.DEFINE_list("sections", ["real", "sweeps"], "What to measure: real (the real log at SPEC sizes), "
                  "sweeps (batch size, seq_length, catalog size), losses (each --loss on each of "
                  "--loss_data_paths, with the experiment flagfiles' encoder).")
flags.DEFINE_list("loss_data_paths", ["../shared/data/beauty_s3rec.txt", "../shared/data/beauty_bert4rec.txt"],
                  "Click logs of the losses section.")
flags.DEFINE_string("section_name", "train", "Name of the BENCHMARKS.md section to write, e.g. train_gpu.")
flags.DEFINE_string("sasrec_python", "", "A Python with torch (a scratch environment, never jaxrec's) to run "
                    "SASRec.pytorch side by side in the real-data table (benchmarks/sasrec_torch.py); '' skips it.")
flags.DEFINE_string("sasrec_dir", "/tmp/SASRec.pytorch/python", "The python/ folder of a SASRec.pytorch checkout.")
flags.DEFINE_string("worker_job", None, "Internal: run one measurement (JSON) in this process.")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that --quick shrinks."""
  batch_size: int = 198
  seq_length: int = 70
  hidden_size: int = 64
  num_heads: int = 2
  num_layers: int = 2
  feed_forward_size: int = 256
  bucket_lengths: tuple = (8, 16, 32)
  short_length: int = 16
  real_users: int = 0  # 0: every user of the real log
  batch_sweep: tuple = (64, 198, 512)
  seq_sweep: tuple = (20, 70, 140)
  catalog_sweep: tuple = (10_000, 100_000, 1_000_000)
  sweep_users: int = 20_000
  sweep_items: int = 12_000  # catalog of the batch and length sweeps
  warmup_steps: int = 3  # sweeps: steps before the clock starts (the first compiles)
  timed_steps: int = 20
  optimizer_repeats: int = 10
  matmul_n: int = 2048
  copy_bytes: int = 1 << 28


FULL = Sizes()
# Compilation dominates at these sizes: few configurations, few distinct shapes.
QUICK = Sizes(batch_size=32, seq_length=16, hidden_size=16, feed_forward_size=32, bucket_lengths=(8,), short_length=8,
              real_users=300, batch_sweep=(32,), seq_sweep=(16,), catalog_sweep=(500,),
              sweep_users=300, sweep_items=500, warmup_steps=1, timed_steps=3, optimizer_repeats=2,
              matmul_n=256, copy_bytes=1 << 22)


# ----------------------------------------------------------------------------- analytic work


def matmul_flops(tokens: float, pairs: float, scored_slots: float, candidates: int, hidden: int, layers: int,
                 feed_forward: int) -> float:
  """Forward matmul FLOPs of one step.

  Per layer, with D hidden and F feed-forward sizes:
    dense + feed-forward:  2 (4 D^2 + 2 D F) per token   (q, k, v, output; D->F->D)
    attention:             4 D per (query, key) pair     (q k^T and probs v, all heads)
  and once per step, the lbm logits: 2 M D per scored slot (its output against the M = B
  candidate labels at its position).
  Useful work: tokens = T real inputs, pairs = sum_r n_r^2, scored slots = T. Computed
  (`computed_work`): the tokens, pairs and scored slots of the layout the batch ran in.
  The backward pass is about twice the forward for every part, so useful / computed
  holds for forward + backward too.
  """
  dense = 2 * (4 * hidden**2 + 2 * hidden * feed_forward) * layers
  return dense * tokens + 4 * hidden * layers * pairs + 2 * candidates * hidden * scored_slots


def computed_work(batch) -> tuple:
  """(tokens, pairs, scored slots) the step computes for `batch`: its encoder rows (plain,
  split by length or packed) and the lbm slots of its loss levels."""
  from jaxrec import input_pipeline
  from jaxrec import packing
  rows, length = batch.input_ids.shape
  if isinstance(batch, input_pipeline.PackedBatch):
    encoder_rows = [(batch.packed_ids.shape[0], length)]
  elif isinstance(batch, input_pipeline.SplitBatch):
    encoder_rows = [batch.short_ids.shape, batch.long_ids.shape]
  else:
    encoder_rows = [(rows, length)]
  tokens = sum(r * l for r, l in encoder_rows)
  pairs = sum(r * l * l for r, l in encoder_rows)
  levels = packing.loss_levels(length, batch.loss_rows)
  if batch.slots is not None:
    scored = batch.slots.size
  elif levels is None:
    scored = rows * length
  else:
    scored = sum((hi - lo) * (rows if r is None else r.size) for lo, hi, r in levels)
  return tokens, pairs, scored


# ----------------------------------------------------------------------------- child side


class CompileCounter:
  """Counts XLA backend compilations (and their seconds) through jax.monitoring."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    import jax
    self.count, self.seconds = 0, 0.0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, name, duration_secs, **kwargs):
    del kwargs
    if name == self.EVENT:
      self.count += 1
      self.seconds += duration_secs


def _first_users(log, num_users: int):
  """The log restricted to its first `num_users` users (the item vocabulary is kept)."""
  from jaxrec import clicks
  n = min(num_users, log.num_users)
  return clicks.ClickLog(log.user_ids[:n], log.item_ids, log.indptr[:n + 1], log.items[:log.indptr[n]])


def _trainer(job, log, workdir):
  """The job's run built through jaxrec's configuration tree, as jaxrec.main builds it."""
  from jaxrec import config as config_lib
  from jaxrec import holdout
  from jaxrec.train import Trainer
  options = dict(job["options"])
  if options.get("short_length", 0) >= options["seq_length"]:
    options["short_length"] = 0  # --quick runs at L=16, where the 16 of the pre-packing row is no shorter length
  config = config_lib.make(**options, num_epochs=3, eval_every_epochs=0, checkpoint_every_steps=10**9,
                           log_every_steps=10**9)
  config = config.replace(model={"num_items": log.num_items})
  return Trainer(config, holdout.leave_one_out(log), workdir)


def _close(trainer):
  trainer.close()


def _step_flops(trainer, state, batch) -> float:
  """XLA's FLOP count of one compiled train step (fwd + bwd + optimizer)."""
  cost = trainer.jitted_step.lower(state, batch, trainer.item_log_q).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def _real_job(job, compiles) -> dict:
  """Three epochs on the real data: compile + warm-up, timed with host batching, timed prebuilt."""
  import jax
  from jaxrec import click_log
  from jaxrec import holdout
  from jaxrec import input_pipeline
  from jaxrec import train as train_lib
  if job["data_path"]:
    log = click_log.read_click_log(job["data_path"])
  else:
    log = click_log.synthetic_click_log(job["synthetic_users"], job["synthetic_items"], seed=0)
  if job["users"]:
    log = _first_users(log, job["users"])
  with tempfile.TemporaryDirectory() as workdir:
    trainer = _trainer(job, log, workdir)
    steps = trainer.steps_per_epoch
    state = trainer.init_state()

    epoch0_start = time.perf_counter()
    for index in range(steps):
      batch, _ = trainer.batch(0, index)
      state, metrics = trainer.train_step(state, batch)
      if index == 0:
        jax.block_until_ready((state, metrics))
        startup_s = time.time() - job["spawn_time"]
    jax.block_until_ready((state, metrics))
    epoch0_s = time.perf_counter() - epoch0_start
    compiles_epoch0, compile_s = compiles.count, compiles.seconds

    real_rows, batch_s, lengths = 0, 0.0, []
    epoch1_start = time.perf_counter()
    for index in range(steps):
      t = time.perf_counter()
      batch, rows = trainer.batch(1, index)
      batch_s += time.perf_counter() - t
      state, metrics = trainer.train_step(state, batch)
      real_rows += rows
      lengths.append(_shape_key(batch))
    jax.block_until_ready((state, metrics))
    epoch1_s = time.perf_counter() - epoch1_start

    # The same epoch again through the training loop's prefetch thread (--prefetch=2): the
    # host builds the next batches while the step runs.
    epoch1p_start = time.perf_counter()
    for host, _ in input_pipeline.prefetch(trainer.plan.epoch(1), 2):
      state, metrics = trainer.train_step(state, train_lib.to_global(host, trainer.batch_sharding))
    jax.block_until_ready((state, metrics))
    epoch1p_s = time.perf_counter() - epoch1p_start

    prebuilt = [trainer.batch(2, index)[0] for index in range(steps)]
    jax.block_until_ready(prebuilt)
    epoch2_start = time.perf_counter()
    for batch in prebuilt:
      state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    epoch2_s = time.perf_counter() - epoch2_start
    compiles_after = compiles.count - compiles_epoch0
    cache_entries = trainer.jitted_step._cache_size()
    timed = {"steps": steps, "rows": real_rows, "seq_per_s": real_rows / epoch1_s,
             "ms_per_step": 1e3 * epoch1_s / steps, "ms_per_step_prebuilt": 1e3 * epoch2_s / steps,
             "ms_per_step_prefetch": 1e3 * epoch1p_s / steps,
             "batch_ms_per_step": 1e3 * batch_s / steps, "startup_s": startup_s, "epoch0_s": epoch0_s,
             "compiles_epoch0": compiles_epoch0, "compile_s": compile_s, "compiles_after": compiles_after,
             "cache_entries": cache_entries, "lengths": sorted(set(lengths), key=str), "loss": float(metrics["loss"]),
             "layout": trainer.plan.layout}
    assert real_rows == len(trainer.train_users)
    if not job.get("analyse", True):
      _close(trainer)
      return {**timed, "peak_rss_mib": common.peak_rss_mib()}

    # Work done in epoch 1: XLA's count at each padded length, scaled per step by its useful
    # share. Shares come from epoch 3's batches: every epoch holds the same rows and the same
    # number of steps per length, so the sums over an epoch are the same.
    flops_at = {}
    for batch in prebuilt:
      if _shape_key(batch) not in flops_at:
        flops_at[_shape_key(batch)] = _step_flops(trainer, state, batch)
    flops = sum(flops_at[length] for length in lengths)
    c = trainer.config.model
    model = dict(hidden=c.hidden_size, layers=c.num_hidden_layers, feed_forward=c.feed_forward_size)
    useful_flops = analytic = real_tokens = padded_tokens = 0.0
    for batch in prebuilt:
      n_B = (np.asarray(batch.input_ids) != 0).sum(axis=1)
      num_rows, length = batch.input_ids.shape
      computed = matmul_flops(*computed_work(batch), num_rows, **model)
      useful = matmul_flops(n_B.sum(), (n_B.astype(np.float64) ** 2).sum(), n_B.sum(), num_rows, **model)
      useful_flops += flops_at[_shape_key(batch)] * useful / computed
      analytic += 3 * computed
      real_tokens += n_B.sum()
      padded_tokens += computed_work(batch)[0]
    _close(trainer)
  return {**timed, "gflop_per_step": flops / steps / 1e9, "gflop_per_s": flops / epoch1_s / 1e9,
          "useful_gflop_per_s": useful_flops / epoch1_s / 1e9, "xla_vs_analytic": flops / analytic,
          "real_token_share": real_tokens / padded_tokens, "peak_rss_mib": common.peak_rss_mib()}


def _shape_key(batch) -> tuple:
  """The shape a batch compiles for: L, then the short width (split by length), the packed
  rows, the loss levels' rows and --loss=full's slot capacity, where the batch has them."""
  import jax
  key = [batch.input_ids.shape[1]]
  for name in ("short_ids", "packed_ids", "slots"):
    value = getattr(batch, name, None)  # the layout's batch type has it, or not
    if value is not None:
      key.append(value.shape[1] if name != "packed_ids" else value.shape[0])
  if batch.loss_rows is not None:
    key.append("+".join(str(r.shape[1]) for r in jax.tree.leaves(batch.loss_rows)))
  return tuple(key)


def _sweep_job(job, compiles) -> dict:
  """Synthetic data, buckets off: warm-up steps, then `timed_steps` timed; optionally Adam alone."""
  import jax
  from jaxrec import click_log
  from jaxrec import holdout
  from jaxrec import input_pipeline
  log = click_log.synthetic_click_log(job["users"], job["items"], seed=0)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = _trainer(job, log, workdir)
    state = trainer.init_state()
    step = 0

    def run(num_steps):
      nonlocal state, step
      rows = 0
      for _ in range(num_steps):
        batch, real = trainer.batch(*divmod(step, trainer.steps_per_epoch))
        state, metrics = trainer.train_step(state, batch)
        rows, step = rows + real, step + 1
      jax.block_until_ready((state, metrics))
      return rows

    run(job["warmup_steps"])
    compiles_before = compiles.count
    start = time.perf_counter()
    rows = run(job["timed_steps"])
    seconds = time.perf_counter() - start
    result = {"ms_per_step": 1e3 * seconds / job["timed_steps"], "seq_per_s": rows / seconds,
              "compiles_timed": compiles.count - compiles_before,
              "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
              "items": log.num_items}
    if job.get("optimizer_repeats"):
      result["optimizer_ms"] = _optimizer_ms(trainer, state, job["optimizer_repeats"])
    _close(trainer)
  result["peak_rss_mib"] = common.peak_rss_mib()
  return result


def _optimizer_ms(trainer, state, repeats: int) -> float:
  """ms of the optimizer update alone (tx.update + apply_updates, jitted, donated) on the params."""
  import jax
  import jax.numpy as jnp
  import optax

  def update(params, opt_state, grads):
    updates, opt_state = trainer.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  fn = jax.jit(update, donate_argnums=(0, 1))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), state.params)
  params, opt_state = fn(state.params, state.opt_state, grads)
  jax.block_until_ready(params)
  start = time.perf_counter()
  for _ in range(repeats):
    params, opt_state = fn(params, opt_state, grads)
  jax.block_until_ready(params)
  return 1e3 * (time.perf_counter() - start) / repeats


def _ceilings_job(job) -> dict:
  """On CPU: XLA matmul and a numpy copy; on an accelerator: a larger matmul and a device copy."""
  import jax
  on_cpu = jax.default_backend() == "cpu"
  return {"matmul_gflops": common.jax_matmul_gflops(job["matmul_n"] if on_cpu else 8192),
          "copy_gbytes_per_s": (common.copy_gbytes_per_s(job["copy_bytes"]) if on_cpu
                                else common.jax_copy_gbytes_per_s(1 << 30)),
          "matmul_n": job["matmul_n"] if on_cpu else 8192, "copy": "numpy" if on_cpu else "device",
          "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}", "jax": jax.__version__}


def _worker(job) -> dict:
  from jaxrec import xla_options
  xla_options.use_ynn_dots(job.get("options", {}).get("ynn_dots", True))  # as jaxrec.main does, before jax starts
  if job["kind"] == "ceilings":
    return _ceilings_job(job)
  compiles = CompileCounter()
  return _real_job(job, compiles) if job["kind"] == "real" else _sweep_job(job, compiles)


# ----------------------------------------------------------------------------- parent side


_results = {}  # identical jobs (e.g. the SPEC point of two sweeps) run once


def _run_child(job) -> dict:
  """Runs one job in a fresh `python -m benchmarks.train_bench` process; returns its JSON line."""
  key = json.dumps(job, sort_keys=True)
  if key not in _results:
    _results[key] = _spawn(job)
  return _results[key]


def _spawn(job) -> dict:
  job = dict(job, spawn_time=time.time())
  args = [sys.executable, "-m", "benchmarks.train_bench", "--worker_job=" + json.dumps(job)]
  # The job, not the parent's XLA_FLAGS, says whether the child uses YNNPACK's dots.
  xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "ynn" not in f)
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=xla_flags))
  if proc.returncode:
    raise RuntimeError(f"{job['kind']} job {job} failed:\n{proc.stderr[-5000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  return json.loads(lines[-1])


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _model_job(sizes: Sizes, options: dict | None = None, **bench) -> dict:
  """A child's job: jaxrec options by their flag names (config.make builds the run from them,
  as jaxrec.main does from its flags) and the benchmark's own settings beside them."""
  defaults = dict(batch_size=sizes.batch_size, seq_length=sizes.seq_length, hidden_size=sizes.hidden_size,
                  num_attention_heads=sizes.num_heads, num_hidden_layers=sizes.num_layers)
  return dict(options={**defaults, **(options or {})}, **bench)


# Table rows (label, format of one _real_job result) shared by the real-data and loss tables.
STEP_ROWS = [
    ("sequences/s", lambda r: f"{r['seq_per_s']:,.0f}"),
    ("ms/step", lambda r: f"{r['ms_per_step']:.1f}"),
    ("ms/step, prefetch thread (--prefetch=2, the default)", lambda r: f"{r['ms_per_step_prefetch']:.1f}"),
    ("ms/step, batches prebuilt", lambda r: f"{r['ms_per_step_prebuilt']:.1f}"),
    ("host batching ms/step", lambda r: f"{r['batch_ms_per_step']:.1f}"),
]
COMPILE_ROWS = [
    ("first epoch s", lambda r: f"{r['epoch0_s']:.1f}"),
    ("compilations by end of first epoch (s)", lambda r: f"{r['compiles_epoch0']} ({r['compile_s']:.1f} s)"),
    ("compilations after first epoch", lambda r: str(r["compiles_after"])),
]


def _results_table(names: list, rows: list, results: list) -> str:
  """A column per result (named by `names`), a row per (label, format) of `rows`."""
  return common.markdown_table(["", *names], [(label, *[fmt(r) for r in results]) for label, fmt in rows])


def real_section(sizes: Sizes, data_path: str, ceilings: dict) -> tuple[str, list]:
  configs = [("default (--layout=auto)", {}),
             ("default, --noynn_dots", {"ynn_dots": False}),
             ("--layout=rows", {"layout": "rows"}),
             ("--layout=plain", {"layout": "plain"}),
             (f"--short_length={sizes.short_length}", {"short_length": sizes.short_length}),
             (f"buckets {sizes.bucket_lengths} (not exact)", {"bucket_lengths": sizes.bucket_lengths})]
  results = []
  for name, overrides in configs:
    _progress(f"train_bench: real data, {name}")
    job = _model_job(sizes, overrides, kind="real", data_path=data_path, users=sizes.real_users,
                     synthetic_users=max(sizes.real_users, 2000), synthetic_items=sizes.sweep_items)
    results.append(_run_child(job))
  sasrec = None
  if FLAGS.sasrec_python and data_path:
    _progress("train_bench: real data, SASRec.pytorch")
    sasrec = _run_sasrec(sizes, data_path)
  ceiling = ceilings["matmul_gflops"]
  versus = [(f"vs SASRec.pytorch ({sasrec['seq_per_s']:,.0f} seq/s, same run)",
             lambda r: f"{r['seq_per_s'] / sasrec['seq_per_s']:.1f}x")] if sasrec else []
  metrics = [
      *STEP_ROWS[:1], *versus, *STEP_ROWS[1:],
      ("batch layout", lambda r: r["layout"]),
      ("start-up s (to end of step 1)", lambda r: f"{r['startup_s']:.1f}"),
      *COMPILE_ROWS,
      ("padded lengths (jit cache entries)",
       lambda r: ", ".join("/".join(map(str, k)) for k in r["lengths"]) + f" ({r['cache_entries']})"),
      ("peak RSS MiB", lambda r: f"{r['peak_rss_mib']:.0f}"),
      ("GFLOP/step (XLA, mean)", lambda r: f"{r['gflop_per_step']:.2f}"),
      ("XLA FLOPs / 3x analytic matmul FLOPs", lambda r: f"{r['xla_vs_analytic']:.2f}"),
      ("GFLOP/s done", lambda r: f"{r['gflop_per_s']:.1f}"),
      ("% of matmul ceiling", lambda r: f"{100 * r['gflop_per_s'] / ceiling:.1f}%"),
      ("real-token share", lambda r: f"{100 * r['real_token_share']:.0f}%"),
      ("useful % of matmul ceiling", lambda r: f"{100 * r['useful_gflop_per_s'] / ceiling:.1f}%"),
      ("loss after 4 epochs (epoch 2 twice)", lambda r: f"{r['loss']:.3f}"),
  ]
  table = _results_table([name for name, _ in configs], metrics, results)
  source = f"`{data_path}`" if data_path else "synthetic data (the real file was not found)"
  users = f"first {sizes.real_users:,} users" if sizes.real_users else "all users"
  text = [f"Real data: {source}, {users}, {results[0]['rows']:,} training sequences per epoch; batch "
          f"{sizes.batch_size}, seq_length {sizes.seq_length}, hidden {sizes.hidden_size}, "
          f"{sizes.num_heads} heads, {sizes.num_layers} layers. Epoch 1 compiles and warms up; sequences/s "
          "and ms/step are over epoch 2 (each batch built before its step is dispatched, no thread); epoch 2 "
          "again through the training loop's prefetch thread; epoch 3 with its batches built beforehand.",
          "", table]
  if sasrec:
    text += ["", f"SASRec.pytorch: `{FLAGS.sasrec_python} benchmarks/sasrec_torch.py --sasrec_dir={FLAGS.sasrec_dir} "
             f"--data_path={os.path.relpath(data_path, REPO)}` (torch {sasrec['torch']}, {sasrec['threads']} threads, "
             f"its main.py loop: BCE with one sampled negative, its 3 sampler processes; batch {sizes.batch_size}, "
             f"maxlen {sizes.seq_length}, hidden {sizes.hidden_size}, {sizes.num_heads} heads, {sizes.num_layers} "
             "blocks), epochs of " + ", ".join(f"{t:.1f}" for t in sasrec["epoch_s"]) + " s; sequences/s over "
             "all but the first."]
  for (name, _), r in zip(configs, results):
    if r["compiles_after"]:
      text.append(f"\nWARNING: {name}: {r['compiles_after']} compilations after the first epoch.")
  return "\n".join(text), results


LOSSES = [("inbatch", {}), ("inbatch, hits removed", {"remove_accidental_hits": True}),
          ("mixed (+256 uniform)", {"loss": "mixed"}), ("full", {"loss": "full"}),
          ("full, label smoothing 0.1 (beauty_spec.flags)", {"loss": "full", "label_smoothing": 0.1}),
          ("full, label smoothing 0.1, --noynn_dots", {"loss": "full", "label_smoothing": 0.1, "ynn_dots": False}),
          ("beauty_spec.flags before packing and YNN dots (+ --short_length=16 --noynn_dots)",
           {"loss": "full", "label_smoothing": 0.1, "short_length": 16, "ynn_dots": False})]


def _run_sasrec(sizes: Sizes, data_path: str) -> dict:
  args = [FLAGS.sasrec_python, os.path.join(REPO, "benchmarks", "sasrec_torch.py"), f"--sasrec_dir={FLAGS.sasrec_dir}",
          f"--data_path={data_path}", f"--batch_size={sizes.batch_size}", f"--maxlen={sizes.seq_length}",
          f"--hidden_units={sizes.hidden_size}", f"--num_blocks={sizes.num_layers}", f"--num_heads={sizes.num_heads}"]
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"SASRec.pytorch failed:\n{proc.stderr[-5000:]}")
  return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


WHOLE_CONFIGS = [("default", []), ("--layout=plain", ["--layout=plain"])]
flags.DEFINE_string("item_features", "../shared/data/beauty_s3rec_item_attributes.txt", "The whole section: the "
                    "default with this --item_features table too (the cost of item features), where it exists and "
                    "--data_path is given; '' skips it.")
flags.DEFINE_integer("whole_epochs", 4, "The whole section: each configuration runs as a process of 1 epoch and "
                     "one of this many; an epoch is the difference over the extra epochs.")


def _whole_run(argv: list) -> tuple:
  """(wall seconds of one whole process as a user times it, start to exit; sequences an epoch, as
  the process says: jaxrec's "N training sequences" line, SASRec.pytorch's JSON)."""
  start = time.perf_counter()
  proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  said = re.search(r"(\d+) training sequences", proc.stderr)
  if said:
    return wall, int(said.group(1))
  return wall, json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])["sequences"]


def whole_section(sizes: Sizes, data_path: str) -> str:
  """The default command line timed as a user times it: whole processes of 1 and N epochs (no
  validation), an epoch being (wall of N - wall of 1) / (N - 1) and start-up the 1-epoch
  process minus an epoch; SASRec.pytorch timed the same way in the same run."""
  n = FLAGS.whole_epochs
  model = [f"--batch_size={sizes.batch_size}", f"--seq_length={sizes.seq_length}", f"--hidden_size={sizes.hidden_size}",
           f"--num_attention_heads={sizes.num_heads}", f"--num_hidden_layers={sizes.num_layers}"]
  data = [f"--data_path={data_path}"] if data_path else ["--data_format=synthetic", "--synthetic_users=2000",
                                                        f"--synthetic_items={sizes.sweep_items}"]
  rows, results, sequences = [], {}, {}
  configs = list(WHOLE_CONFIGS)
  if FLAGS.item_features and data_path and os.path.exists(FLAGS.item_features):
    configs.append(("default + --item_features", [f"--item_features={os.path.abspath(FLAGS.item_features)}"]))
  for name, extra in configs:
    walls = []
    for epochs in (1, n):
      with tempfile.TemporaryDirectory() as workdir:
        _progress(f"train_bench: whole process, {name}, {epochs} epoch(s)")
        wall, sequences[name] = _whole_run([sys.executable, "-m", "jaxrec.main", *data, *model, *extra,
                                            f"--workdir={workdir}", f"--num_epochs={epochs}", "--eval_every_epochs=1000"])
        walls.append(wall)
    results[name] = walls
  if FLAGS.sasrec_python and data_path:
    walls = []
    for epochs in (1, n):
      _progress(f"train_bench: whole process, SASRec.pytorch, {epochs} epoch(s)")
      wall, sequences["SASRec.pytorch"] = _whole_run([
          FLAGS.sasrec_python, os.path.join(REPO, "benchmarks", "sasrec_torch.py"), f"--sasrec_dir={FLAGS.sasrec_dir}",
          f"--data_path={data_path}", f"--epochs={epochs}", f"--batch_size={sizes.batch_size}",
          f"--maxlen={sizes.seq_length}", f"--hidden_units={sizes.hidden_size}", f"--num_blocks={sizes.num_layers}",
          f"--num_heads={sizes.num_heads}"])
      walls.append(wall)
    results["SASRec.pytorch"] = walls
  epoch = {k: (w[1] - w[0]) / (n - 1) for k, w in results.items()}
  rate = {k: sequences[k] / epoch[k] for k in results}
  for name, (one, many) in results.items():
    versus = f"{rate[name] / rate['SASRec.pytorch']:.1f}x" if "SASRec.pytorch" in rate and name != "SASRec.pytorch" else "-"
    rows.append([name, f"{one:.1f}", f"{many:.1f}", f"{epoch[name]:.2f}", f"{sequences[name]:,}",
                 f"{rate[name]:,.0f}", f"{one - epoch[name]:.1f}", versus])
  header = ["command", "1 epoch, s", f"{n} epochs, s", "s / epoch", "sequences an epoch", "sequences/s",
            "start-up s", "vs SASRec.pytorch"]
  return "\n".join([
      f"Whole processes, timed as a user times them: each configuration's command line ran for 1 epoch and for {n} "
      f"(`--eval_every_epochs=1000`: no validation), each its own process; an epoch is (wall of {n} - wall of 1) / "
      f"{n - 1}, start-up the 1-epoch wall minus an epoch, and sequences/s an epoch's training sequences (as each "
      "process says) over it. Everything a run does counts: reading, planning, compiling, checkpoint saves at every epoch's "
      "end, the metrics fetch and checks of every step, the prefetch thread."
      + (" SASRec.pytorch: `benchmarks/sasrec_torch.py --epochs=1` and `--epochs=" + str(n) + "`, timed the same "
         "way." if "SASRec.pytorch" in results else ""), "",
      common.markdown_table(header, rows)])


def losses_section(sizes: Sizes, data_paths: list) -> str:
  """Each loss on each log, with the experiment flagfiles' encoder (shared table, feed-forward,
  dropout 0.5, the default layout): what a variant costs per step."""
  text = ["Each `--loss` with the encoder of the experiment flagfiles: one shared item table, "
          f"feed-forward {sizes.feed_forward_size}, dropout 0.5, the default `--layout=auto`; batch "
          f"{sizes.batch_size}, seq_length {sizes.seq_length}, hidden {sizes.hidden_size}, {sizes.num_heads} "
          f"heads, {sizes.num_layers} layers, all users. Epoch 1 compiles and warms up; sequences/s and ms/step "
          "are over epoch 2 (host batching included); epoch 3 reruns with its batches built beforehand. "
          "`--loss=full` compiles once per slot capacity (packing.slot_capacity) it meets."]
  for path in data_paths:
    results = []
    for name, overrides in LOSSES:
      _progress(f"train_bench: losses, {os.path.basename(path) or 'synthetic'}, {name}")
      job = _model_job(sizes, dict(feed_forward_size=sizes.feed_forward_size, dropout_rate=0.5,
                                   share_embeddings=True, **overrides),
                       kind="real", data_path=path, users=sizes.real_users, analyse=False,
                       synthetic_users=max(sizes.real_users, 2000), synthetic_items=sizes.sweep_items)
      results.append(_run_child(job))
    metrics = [*STEP_ROWS, ("epoch s", lambda r: f"{r['ms_per_step'] * r['steps'] / 1e3:.1f}"),
               ("batch layout", lambda r: r["layout"]), *COMPILE_ROWS,
               ("peak RSS MiB", lambda r: f"{r['peak_rss_mib']:.0f}")]
    source = f"`{path}`" if path else "synthetic data"
    text += ["", f"{source}, {results[0]['rows']:,} training sequences per epoch:", "",
             _results_table([name for name, _ in LOSSES], metrics, results)]
  return "\n".join(text)


def sweep_section(sizes: Sizes, ceilings: dict) -> tuple[str, dict]:
  timing = dict(warmup_steps=sizes.warmup_steps, timed_steps=sizes.timed_steps)
  sweeps = {"batch": [], "seq": [], "catalog": [], "catalog_sparse": []}
  for batch_size in sizes.batch_sweep:
    _progress(f"train_bench: synthetic, batch {batch_size}")
    sweeps["batch"].append(_run_child(_model_job(sizes, dict(batch_size=batch_size), kind="sweep",
                                                 users=sizes.sweep_users, items=sizes.sweep_items, **timing)))
  for seq_length in sizes.seq_sweep:
    _progress(f"train_bench: synthetic, seq_length {seq_length}")
    sweeps["seq"].append(_run_child(_model_job(sizes, dict(seq_length=seq_length), kind="sweep",
                                               users=sizes.sweep_users, items=sizes.sweep_items, **timing)))
  for items in sizes.catalog_sweep:
    _progress(f"train_bench: synthetic, {items:,} items")
    sweeps["catalog"].append(_run_child(_model_job(sizes, kind="sweep", users=sizes.sweep_users, items=items,
                                                   optimizer_repeats=sizes.optimizer_repeats, **timing)))
    _progress(f"train_bench: synthetic, {items:,} items, --sparse_embedding_updates")
    sweeps["catalog_sparse"].append(_run_child(_model_job(sizes, dict(sparse_embedding_updates=True), kind="sweep",
                                                          users=sizes.sweep_users, items=items, **timing)))

  def rows(values, results):
    return [(f"{v:,}", f"{r['ms_per_step']:.1f}", f"{r['seq_per_s']:,.0f}", f"{r['peak_rss_mib']:.0f}")
            for v, r in zip(values, results)]
  header = ["ms/step", "sequences/s", "peak RSS MiB"]
  base = sweeps["catalog"][0]["ms_per_step"]
  bandwidth = ceilings["copy_gbytes_per_s"] * 1e9
  catalog_rows = [(f"{items:,}", f"{r['ms_per_step']:.1f}", f"{r['ms_per_step'] / base:.2f}x",
                   f"{r['optimizer_ms']:.1f}", f"{28e3 * r['params'] / bandwidth:.1f}",
                   f"{sp['ms_per_step']:.1f}", f"{sp['ms_per_step'] / base:.2f}x", f"{r['params'] / 1e6:.1f}",
                   f"{r['peak_rss_mib']:.0f} / {sp['peak_rss_mib']:.0f}")
                  for items, r, sp in zip(sizes.catalog_sweep, sweeps["catalog"], sweeps["catalog_sparse"])]
  recompiled = sum(r["compiles_timed"] for results in sweeps.values() for r in results)
  ratio = sweeps["catalog"][-1]["ms_per_step"] / base
  sparse_ratio = sweeps["catalog_sparse"][-1]["ms_per_step"] / base
  text = [
      f"Synthetic data (`jaxrec.click_log.synthetic_click_log`, {sizes.sweep_users:,} users), buckets off, "
      f"{sizes.timed_steps} steps timed after {sizes.warmup_steps} warm-up step(s); other sizes as above "
      f"({sizes.sweep_items:,} items unless swept).", "",
      common.markdown_table(["batch size", *header], rows(sizes.batch_sweep, sweeps["batch"])), "",
      common.markdown_table(["seq_length", *header], rows(sizes.seq_sweep, sweeps["seq"])), "",
      common.markdown_table(["items", "dense ms/step", "vs smallest", "Adam update alone ms",
                             "Adam memory floor ms", "sparse ms/step", "sparse vs smallest dense",
                             "params (M)", "peak RSS MiB dense / sparse"], catalog_rows), "",
      f"Largest catalog: dense Adam {ratio:.2f}x the step time of the smallest catalog, "
      f"`--sparse_embedding_updates` {sparse_ratio:.2f}x (target: at most 1.5x, "
      f"{'met' if min(ratio, sparse_ratio) <= 1.5 else 'missed'}). "
      "Adam update alone: a jitted, donated `tx.update` + `apply_updates` on all parameters. "
      "Adam memory floor: 7 float32 passes over the parameters (read params, grads, mu, nu; write "
      "params, mu, nu) = 28 bytes/param at the copy ceiling.",
  ]
  if recompiled:
    text.append(f"\nWARNING: {recompiled} compilations during timed sweep steps.")
  return "\n".join(text), sweeps


def plot(sizes: Sizes, sweeps: dict, path: str) -> bool:
  """The three sweeps side by side, log x; False when matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  panels = [(sizes.batch_sweep, [r["seq_per_s"] for r in sweeps["batch"]], "batch size", "sequences/s"),
            (sizes.seq_sweep, [r["seq_per_s"] for r in sweeps["seq"]], "seq_length", "sequences/s"),
            (sizes.catalog_sweep, [r["ms_per_step"] for r in sweeps["catalog"]], "items", "ms/step")]
  for ax, (x, y, xlabel, ylabel) in zip(axes, panels):
    ax.plot(x, y, "o-", label="train step")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:,}" for v in x])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
  axes[2].plot(sizes.catalog_sweep, [r["optimizer_ms"] for r in sweeps["catalog"]], "s--",
               label="Adam update alone")
  axes[2].plot(sizes.catalog_sweep, [r["ms_per_step"] for r in sweeps["catalog_sparse"]], "^-",
               label="sparse_embedding_updates")
  axes[2].legend()
  fig.suptitle(f"jaxrec training, {common.machine_line()}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def main(argv):
  del argv
  if FLAGS.worker_job:
    print(json.dumps(_worker(json.loads(FLAGS.worker_job))), flush=True)
    return
  sizes = QUICK if FLAGS.quick else FULL
  markdown_out = FLAGS.markdown_out
  if markdown_out is None:
    markdown_out = "" if FLAGS.quick else common.BENCHMARKS_MD
  plot_out = FLAGS.plot_out if FLAGS.plot_out is not None else ("" if FLAGS.quick else DEFAULT_PLOT)
  data_path = os.path.abspath(FLAGS.data_path) if FLAGS.data_path else ""
  if not os.path.exists(data_path):
    if not FLAGS.quick:
      raise app.UsageError(f"--data_path: {data_path or '(empty)'} not found")
    data_path = ""
  _progress("train_bench: ceilings")
  ceilings = _run_child({"kind": "ceilings", "matmul_n": sizes.matmul_n, "copy_bytes": sizes.copy_bytes})
  # The ceiling is the faster of XLA's matmul with and without YNNPACK's dots.
  without = _run_child({"kind": "ceilings", "matmul_n": sizes.matmul_n, "copy_bytes": sizes.copy_bytes,
                        "options": {"ynn_dots": False}})
  ceilings["matmul_gflops_ynn"], ceilings["matmul_gflops_xla"] = ceilings["matmul_gflops"], without["matmul_gflops"]
  ceilings["matmul_gflops"] = max(ceilings["matmul_gflops"], without["matmul_gflops"])
  unknown = set(FLAGS.sections) - {"real", "sweeps", "losses", "whole"}
  if unknown:
    raise app.UsageError(f"--sections: unknown {sorted(unknown)} (choose from real, sweeps, losses, whole)")
  loss_paths = [os.path.abspath(p) for p in FLAGS.loss_data_paths if os.path.exists(p)]
  if "losses" in FLAGS.sections and len(loss_paths) < len(FLAGS.loss_data_paths):
    if not FLAGS.quick:
      raise app.UsageError(f"--loss_data_paths: {', '.join(FLAGS.loss_data_paths)}: not all found")
    loss_paths = [""]
  real_text = real_section(sizes, data_path, ceilings)[0] if "real" in FLAGS.sections else ""
  sweep_text, sweeps = sweep_section(sizes, ceilings) if "sweeps" in FLAGS.sections else ("", None)
  loss_text = losses_section(sizes, loss_paths) if "losses" in FLAGS.sections else ""
  whole_text = whole_section(sizes, data_path) if "whole" in FLAGS.sections else ""
  plotted = bool(plot_out) and sweeps is not None and plot(sizes, sweeps, plot_out)
  intro = [
      f"`{common.command_line('benchmarks.train_bench')}`" + (" (smoke-test sizes)" if FLAGS.quick else ""),
      f"Machine: {common.machine_line()}; {ceilings['device']}, jax {ceilings['jax']}.",
      f"Ceilings, this run: XLA float32 {ceilings['matmul_n']}^3 matmul (default precision) "
      f"{ceilings['matmul_gflops']:,.1f} GFLOP/s (the faster of YNNPACK's dots, "
      f"{ceilings['matmul_gflops_ynn']:,.1f}, and XLA's, {ceilings['matmul_gflops_xla']:,.1f}); "
      f"{ceilings['copy']} copy {ceilings['copy_gbytes_per_s']:,.1f} GB/s "
      "(read + write).",
      ("GFLOP/s done: XLA's `cost_analysis()['flops']` of the compiled step at each padded length, summed "
       "over the epoch's steps, over the epoch's time. Useful: each step's count scaled by its real share "
       "(tokens for dense, feed-forward and lbm; sum n_r^2 vs L^2 for attention; see `matmul_flops`)."
       if "real" in FLAGS.sections else ""),
  ]
  suffix = (" by loss" if FLAGS.sections == ["losses"] else
            ", layouts" if set(FLAGS.sections) <= {"real", "whole"} else "")
  blocks = ["## Training throughput" + suffix,
            "\n".join(line for line in intro if line), whole_text, real_text, sweep_text, loss_text,
            f"![training throughput]({os.path.relpath(plot_out, REPO)})" if plotted else ""]
  markdown = "\n\n".join(block for block in blocks if block)  # sections not run leave no gap
  print(markdown)
  if markdown_out:
    common.update_section(FLAGS.section_name, markdown, markdown_out)


if __name__ == "__main__":
  app.run(main)
