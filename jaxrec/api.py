"""The Python API: what each --mode of `jaxrec.main` does, as functions of a `Config`.

  from jaxrec import api, config
  cfg = config.Config(data=config.DataConfig(data_path="clicks.csv", time_col="ts"),
                      run=config.RunConfig(workdir="runs/mine"))
  summary = api.train(cfg)                        # resumes if runs/mine holds a run
  api.export(cfg)                                 # runs/mine/embeddings.npz
  api.recall(config.RecallConfig(embeddings="runs/mine/embeddings.npz", output="runs/mine/recall.tsv"))

The same checks as the command line, raised as InputError (the command line turns it into
one line and exit 2). Several processes (RunConfig.num_processes): call
`jax.distributed.initialize` first, as jaxrec.main does.
"""

import json
import os
import resource
import time

from jaxrec import checkpoints
from jaxrec import click_log
from jaxrec import console
from jaxrec import errors
from jaxrec import evaluate as evaluate_lib
from jaxrec import export as export_lib
from jaxrec import holdout
from jaxrec import hosts
from jaxrec import item_features
from jaxrec import model_export
from jaxrec import recall as recall_lib
from jaxrec import train as train_lib
from jaxrec import vocab
from jaxrec import workdir as workdir_lib
from jaxrec.clicks import ClickLog
from jaxrec.config import Config, IndexConfig, RecallConfig, seconds
from jaxrec.errors import InputError


def load_clicks(cfg: Config) -> ClickLog:
  cfg.check_runnable("inspect")
  d = cfg.data
  if d.data_format == "synthetic":
    return click_log.synthetic_click_log(d.synthetic_users, d.synthetic_items, d.synthetic_seed)
  with console.slow(f"reading {d.data_path}"):
    return click_log.read_click_log(d.data_path, d.data_format, d.user_col, d.item_col, d.time_col,
                                    d.separator, d.nulls)


def read_clicks(cfg: Config) -> tuple:
  """(the clicks this process trains on, hosts.FileShares or None): the whole log, or with
  --shard_by=file only this process's files of a Parquet directory."""
  if cfg.data.shard_by == "file":
    cfg.check_runnable("inspect")
    with console.slow(f"reading this process's files of {cfg.data.data_path}"):
      return hosts.read_own_files(cfg.data, cfg.data_shards)
  return load_clicks(cfg), None


def make_split(cfg: Config, log: ClickLog) -> holdout.Split:
  if cfg.data.holdout == "none":
    return holdout.no_holdout(log)
  if cfg.data.split == "time":
    split = holdout.time_split(log, seconds(cfg.data.valid_from), seconds(cfg.data.test_from), cfg.data.source)
  else:
    split = holdout.leave_one_out(log, cfg.data.source)
  return split.sampled(cfg.eval.eval_users, cfg.train.seed, cfg.eval.test_users == "sample")


def own_share(cfg: Config, split: holdout.Split, shares: "hosts.FileShares | None" = None) -> holdout.Split:
  """This process's users of `split` (several processes), with the whole log's item counts;
  with `shares` (--shard_by=file) the split holds only them already."""
  if shares is not None:
    console.every_process("holds %d of %d users, from its files of %s (data shards %s of %d)", split.log.num_users,
                          shares.users, cfg.data.data_path, ",".join(map(str, hosts.own_shards(cfg.data_shards))),
                          cfg.data_shards)
    return hosts.file_share(split, shares)
  if cfg.run.num_processes == 1:
    return split
  users = hosts.own_users(split.log.user_ids, cfg.data_shards)
  console.every_process("holds %d of %d users (data shards %s of %d)", len(users), split.log.num_users,
                        ",".join(map(str, hosts.own_shards(cfg.data_shards))), cfg.data_shards)
  return hosts.subset_split(split, users, split.item_counts())


def train(cfg: Config, log: ClickLog | None = None) -> dict:
  """Trains in cfg.run.workdir (resuming a run there), validates, tests the best; returns the
  summary that summary.json records. Raises train.Preempted after saving on SIGTERM / SIGINT."""
  cfg.check_runnable("train")
  workdir_lib.check_publishable(cfg)
  began = time.perf_counter()
  log, shares = read_clicks(cfg) if log is None else (log, None)
  features = item_features.read(cfg.features) if cfg.features.item_features else None
  read_s = time.perf_counter() - began
  start = workdir_lib.start_training(cfg, log, features)
  split = make_split(start.config, start.log)
  if len(split.train_users) == 0:
    raise InputError(f"{cfg.data.source}: no user has 2 or more training clicks (with --holdout=last, users "
                     "with 3 or more clicks keep their last 2 for validation and test): nothing to train on")
  with workdir_lib.removed_unless_checkpointed(cfg.run.workdir):
    run_info = workdir_lib.record(start, split.item_counts())
    # Phase lines only now that every input check has passed: bad input stays one error line.
    console.info("read %d clicks of %d users on %d items from %s in %.1f s", len(log.items), log.num_users,
                 log.num_items - 1, cfg.data.source, read_s)
    if start.features_note:
      console.info("%s", start.features_note)
    console.info("%s", split.describe())
    split = own_share(start.config, split, shares)  # several processes: the other users' clicks are dropped here
    result = train_lib.train_and_evaluate(start.config, split, cfg.run.workdir, run_info,
                                          start.base and start.base.params)
  workdir_lib.publish(cfg)
  return result


def evaluate(cfg: Config, log: ClickLog | None = None) -> list:
  """Validation and test metrics of the selected checkpoint, appended to metrics.jsonl."""
  cfg.check_runnable("eval")
  if cfg.data.holdout == "none":
    raise InputError("--mode=eval: --holdout=none holds nothing out to evaluate")
  model, mgr, step = workdir_lib.select(cfg)
  workdir_lib.check_evaluable(cfg)
  log, shares = read_clicks(cfg) if log is None else (log, None)
  split = own_share(cfg, make_split(cfg, workdir_lib.model_log(cfg, log, model)), shares)
  del log
  params = checkpoints.restore_params(mgr, step)
  rows = [{"split": which, "step": step, "mode": "eval",
           **evaluate_lib.evaluate(params, model, split, which, cfg.eval.eval_ks, cfg.eval.eval_batch_size)}
          for which in ("valid", "test")]
  if console.is_main_process():
    path = os.path.join(cfg.run.workdir, "metrics.jsonl")
    with errors.writing(path, "the evaluation printed above is complete"), open(path, "a") as f:
      for row in rows:
        evaluate_lib.print_table(row)
        f.write(json.dumps(row) + "\n")
  return rows


def export(cfg: Config, log: ClickLog | None = None) -> str:
  """User and item vectors with raw ids to --output (default <workdir>/embeddings.npz)."""
  cfg.check_runnable("export")
  model, mgr, step = workdir_lib.select(cfg)
  workdir_lib.check_read_settings(cfg)
  workdir_lib.check_publishable(cfg)
  path = cfg.run.output or os.path.join(cfg.run.workdir, "embeddings.npz")
  out_dir = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise InputError(f"--output={path}: is a directory")
  if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
    raise InputError(f"--output={path}: directory {out_dir} is not writable")
  if cfg.data.shard_by == "file" and cfg.run.num_processes > 1:
    raise InputError("--mode=export: with --shard_by=file run it as one process (it reads every file); its "
                     "processes would each hold only their users")
  log = workdir_lib.model_log(cfg, load_clicks(cfg) if log is None else log, model)
  params = checkpoints.restore_params(mgr, step)
  metadata = {"step": step, "model_config": json.dumps(model.as_dict(), sort_keys=True),
              "vocab_fingerprint": vocab.vocab_fingerprint(log.item_ids)}
  shard = {}
  if cfg.run.num_processes > 1:  # each process its own users' vectors; the first writes them all
    users = hosts.own_users(log.user_ids, cfg.data_shards)
    console.every_process("exports %d of %d users", len(users), log.num_users)
    shard = {"user_index": users, "user_ids": log.user_ids}
    log = hosts.subset_log(log, users)
  with errors.writing(path, "nothing was written there"):
    arrays = export_lib.export_embeddings(params, model, log, path, cfg.eval.export_until,
                                          cfg.eval.eval_batch_size, metadata, **shard)
  if arrays:
    console.info("wrote %s: %d users, %d items, checkpoint step %d", path, len(arrays["user_ids"]),
                 len(arrays["item_ids"]), step)
  workdir_lib.publish(cfg)
  return path


def export_model(cfg: Config) -> str:
  """The portable artifact (model_export.py) in --output or <workdir>/model; reads no log."""
  cfg.check_runnable("export_model")
  model, mgr, step = workdir_lib.select(cfg)
  directory = cfg.run.output or os.path.join(cfg.run.workdir, "model")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise InputError(f"--output={directory}: not a directory")
  if cfg.run.onnx:
    try:
      import jax2onnx  # noqa: F401  (an optional extra)
    except ImportError:
      raise InputError("--onnx: needs the onnx extra (pip install -e '.[onnx]')") from None
  with errors.writing(f"the model artifact under {directory}", "files written before it are whole"):
    paths = model_export.export_workdir(cfg.run.workdir, model, mgr, step, directory, cfg.run.onnx)
  console.info("wrote %s: %s (checkpoint step %d)", directory, ", ".join(os.path.basename(p) for p in paths), step)
  return directory


def inspect(cfg: Config) -> str:
  """What a user runs first on a new log: its shape, what --seq_length would pad, load time and memory."""
  start = time.perf_counter()
  log = load_clicks(cfg)
  load_s = time.perf_counter() - start
  return "\n".join([f"{cfg.data.source}: " + click_log.describe(log, cfg.model.seq_length),
                    f"loaded in {load_s:.2f} s, peak RSS "
                    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"])


def recall(cfg: RecallConfig, index: IndexConfig = IndexConfig()) -> str:
  """Every user's top-N unvisited items of an exported .npz, written to cfg.output (no JAX)."""
  recall_lib.recall_to_file(cfg, index)
  return cfg.output
