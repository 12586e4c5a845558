r"""jaxrec command line: train, evaluate or export the seq2seq recall model.

  python -m jaxrec.main --flagfile=experiments/base.flags              # train (resumes)
  python -m jaxrec.main --flagfile=experiments/base.flags --mode=eval  # evaluate a checkpoint
  python -m jaxrec.main --flagfile=experiments/base.flags --mode=export

This is the only module that defines flags: it turns them into configs and calls
the library. Bad flags or input exit with status 2 and one line on stderr.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from jaxrec import console
from jaxrec import click_log
from jaxrec.errors import InputError, exit_on_input_error, flags_parser

PROG = "jaxrec"

# Data.
flags.DEFINE_string("data_path", "", "Click log to train on (not needed with --data_format=synthetic).")
flags.DEFINE_enum("data_format", "auto", list(click_log.FORMATS),
                  "note: `user:[i1,i2]` lines; sequences: `user i1 i2 ...` lines; pairs: `user item "
                  "[time]` lines; csv: header + --user_col/--item_col/--time_col; synthetic: built-in "
                  "generated clicks; auto: detect from the file.")
flags.DEFINE_string("user_col", "user", "CSV column of user ids.")
flags.DEFINE_string("item_col", "item", "CSV column of item ids.")
flags.DEFINE_string("time_col", "", "CSV column of timestamps (optional; sorts each user's clicks).")
flags.DEFINE_integer("synthetic_users", 5000, "Users of the synthetic click log.", lower_bound=1)
flags.DEFINE_integer("synthetic_items", 1000, "Items of the synthetic click log.", lower_bound=1)
flags.DEFINE_integer("synthetic_seed", 0, "Seed of the synthetic click log.")
# Model (SPEC section 8 defaults).
flags.DEFINE_integer("seq_length", 70, "Most recent clicks the encoder reads (L).", lower_bound=1)
flags.DEFINE_integer("hidden_size", 64, "Embedding and hidden size (D).", lower_bound=1)
flags.DEFINE_integer("num_attention_heads", 2, "Attention heads (H); must divide --hidden_size.",
                     lower_bound=1)
flags.DEFINE_integer("num_hidden_layers", 2, "Self-attention encoder layers.", lower_bound=1)
flags.DEFINE_integer("feed_forward_size", 0, "Inner size of a feed-forward sub-layer per layer; 0: none.",
                     lower_bound=0)
flags.DEFINE_float("dropout_rate", 0.0, "Dropout on embeddings and sub-layer outputs.")
flags.DEFINE_float("attention_dropout_rate", 0.0, "Dropout on attention probabilities.")
flags.DEFINE_bool("share_embeddings", False, "Tie outputs_embedding to item_embeddings.")
flags.DEFINE_bool("embedding_layer_norm", False, "LayerNorm on item + position embeddings before the "
                  "first layer (as BERT and S3Rec-style SASRec code).")
flags.DEFINE_enum("position_order", "forward", ["forward", "backward"],
                  "forward: first real item has position 0; backward: the most recent has 0.")
# Training.
flags.DEFINE_integer("batch_size", 198, "Sequences per global batch (B).", lower_bound=1)
flags.DEFINE_integer("num_epochs", 10, "Passes over the training users.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Peak Adam learning rate.")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"], "Schedule after warm-up.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps.", lower_bound=0)
flags.DEFINE_float("weight_decay", 0.0, "AdamW decoupled weight decay.", lower_bound=0)
flags.DEFINE_float("grad_clip_norm", 0.0, "Clip gradients to this global norm; 0: no clipping.",
                   lower_bound=0)
flags.DEFINE_enum("loss", "inbatch", ["inbatch", "mixed", "full"],
                  "inbatch: in-batch softmax with logQ (SPEC); mixed: plus --num_negatives sampled items "
                  "shared by the batch; full: softmax over the whole catalog.")
flags.DEFINE_bool("remove_accidental_hits", False, "Drop candidates equal to the row's own label.")
flags.DEFINE_integer("num_negatives", 256, "--loss=mixed: sampled items per step.", lower_bound=1)
flags.DEFINE_enum("negative_distribution", "uniform", ["uniform", "popularity"],
                  "--loss=mixed: how the extra items are drawn.")
flags.DEFINE_enum("log_q", "standard", ["standard", "corrected"],
                  "--loss=inbatch/mixed: standard logQ (SPEC: every candidate minus log q) or the "
                  "corrected logQ of Khrylchenko et al. (RecSys 2025).")
flags.DEFINE_float("label_smoothing", 0.0, "--loss=full: share of the target spread evenly over all "
                   "items instead of the clicked one.")
flags.DEFINE_bool("sparse_embedding_updates", False,
                  "Row-sparse (lazy) Adam on the item tables: each step updates only the rows its "
                  "batch touches, so step cost stops growing with the catalog (not with --loss=full, "
                  "--weight_decay or --grad_clip_norm, which the sparse rows would not get).")
flags.DEFINE_integer("short_length", 0,
                     "Run the encoder on each batch's shorter rows at this padded length (e.g. 16) and "
                     "on its few longest at --seq_length: the same batches and loss, several times "
                     "less encoder work on real logs. 0: off. Not with --bucket_lengths.", lower_bound=0)
flags.DEFINE_list("bucket_lengths", [],
                  "Shorter padded lengths, e.g. 8,16,32: users are batched with others of similar "
                  "length and run at the shortest that holds them (exact, much faster on short logs).")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling, negatives and dropout.")
flags.DEFINE_integer("checkpoint_every_steps", 1000, "Checkpoint interval (also at every epoch end).",
                     lower_bound=1)
flags.DEFINE_integer("max_to_keep", 3, "Checkpoints kept.", lower_bound=1)
flags.DEFINE_integer("log_every_steps", 50, "Progress line interval.", lower_bound=1)
# Evaluation and export.
flags.DEFINE_integer("eval_every_epochs", 1, "Validate every N epochs; 0: never.", lower_bound=0)
flags.DEFINE_list("eval_ks", ["10", "20", "50"], "Cut-offs K of HR@K and NDCG@K.")
flags.DEFINE_integer("eval_batch_size", 1024, "Users per evaluation block.", lower_bound=1)
flags.DEFINE_integer("patience", 0, "Stop after this many validations without a better NDCG@10; 0: never.",
                     lower_bound=0)
flags.DEFINE_enum("checkpoints", "latest", ["latest", "best"],
                  "--mode=eval/export: read the latest checkpoints (for resuming) or the best on "
                  "validation NDCG@10 (the model training selected).")
flags.DEFINE_integer("checkpoint_step", None, "--mode=eval/export: checkpoint step (default: the newest of "
                     "--checkpoints).")
flags.DEFINE_enum("export_until", "none", ["none", "test"],
                  "none: user vectors from the whole history; test: from the clicks before the test item.")
flags.DEFINE_string("output", "", "--mode=export: output path (default <workdir>/embeddings.npz).")
# Run.
flags.DEFINE_string("workdir", "", "Directory of checkpoints, vocabularies, metrics and TensorBoard logs.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.", lower_bound=1)
flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.", lower_bound=0)

FLAGS = flags.FLAGS

_FLOAT32_MAX = float(np.finfo(np.float32).max)  # the step casts the learning rate to float32


def _rule(names, ok, message):
  """Registers `ok(values) -> bool` over the flags `names`; `message(values)` says what is wrong.

  A violated rule fails flag parsing: one line on stderr and exit 2 (errors.flags_parser).
  """
  def check(values):
    if not ok(values):
      raise flags.ValidationError(message(values))
    return True
  flags.register_multi_flags_validator(names, check)


def _ints(values) -> list | None:
  try:
    return [int(v) for v in values]
  except ValueError:
    return None


_rule(["learning_rate"], lambda v: 0 < v["learning_rate"] <= _FLOAT32_MAX,
      lambda v: f"--learning_rate={v['learning_rate']}: must be positive and finite in float32")
for _name in ("dropout_rate", "attention_dropout_rate", "label_smoothing"):
  _rule([_name], lambda v, n=_name: 0 <= v[n] < 1, lambda v, n=_name: f"--{n}={v[n]}: must be in [0, 1)")
_rule(["hidden_size", "num_attention_heads"], lambda v: v["hidden_size"] % v["num_attention_heads"] == 0,
      lambda v: f"--hidden_size={v['hidden_size']} is not divisible by "
                f"--num_attention_heads={v['num_attention_heads']}")
_rule(["workdir"], lambda v: bool(v["workdir"]), lambda v: "--workdir: required")
_rule(["data_format", "data_path"], lambda v: v["data_format"] == "synthetic" or bool(v["data_path"]),
      lambda v: "--data_path: required unless --data_format=synthetic")
_rule(["eval_ks"], lambda v: _ints(v["eval_ks"]) is not None,
      lambda v: f"--eval_ks={','.join(v['eval_ks'])}: expected integers like 10,20,50")
_rule(["eval_ks"], lambda v: _ints(v["eval_ks"]) is None or min(_ints(v["eval_ks"]), default=0) > 0,
      lambda v: f"--eval_ks={','.join(v['eval_ks'])}: cut-offs must be positive")
_rule(["eval_ks", "eval_every_epochs"],
      lambda v: not v["eval_every_epochs"] or 10 in (_ints(v["eval_ks"]) or [10]),
      lambda v: f"--eval_ks={','.join(v['eval_ks'])}: must include 10 (checkpoints are picked by NDCG@10)")
_rule(["bucket_lengths"], lambda v: _ints(v["bucket_lengths"]) is not None,
      lambda v: f"--bucket_lengths={','.join(v['bucket_lengths'])}: expected integers like 8,16,32")
_rule(["bucket_lengths"], lambda v: all(b > 0 for b in _ints(v["bucket_lengths"]) or []),
      lambda v: f"--bucket_lengths={','.join(v['bucket_lengths'])}: lengths must be positive")
_rule(["short_length", "bucket_lengths"], lambda v: not (v["short_length"] and v["bucket_lengths"]),
      lambda v: "--short_length: choose it or --bucket_lengths, not both")
_rule(["short_length", "seq_length"], lambda v: v["short_length"] < v["seq_length"],
      lambda v: f"--short_length={v['short_length']}: must be in [0, --seq_length)")
_rule(["sparse_embedding_updates", "loss"], lambda v: not (v["sparse_embedding_updates"] and v["loss"] == "full"),
      lambda v: "--sparse_embedding_updates: does not combine with --loss=full, which reads every row")
# The sparse step runs its own Adam on the touched rows: decoupled weight decay and global-norm
# clipping would reach only the dense parameters, so these combinations are refused.
for _name in ("weight_decay", "grad_clip_norm"):
  _rule(["sparse_embedding_updates", _name], lambda v, n=_name: not (v["sparse_embedding_updates"] and v[n]),
        lambda v, n=_name: f"--sparse_embedding_updates: does not combine with --{n}={v[n]}, which "
                           "its row-sparse Adam does not apply to the item tables")
_rule(["log_q", "loss"], lambda v: not (v["log_q"] == "corrected" and v["loss"] == "full"),
      lambda v: "--log_q=corrected: only for --loss=inbatch or mixed (the full softmax samples nothing)")
_rule(["label_smoothing", "loss"], lambda v: not (v["label_smoothing"] and v["loss"] != "full"),
      lambda v: "--label_smoothing: only for --loss=full (a sampled softmax has no catalog to spread over)")
_rule(["process_id", "num_processes"], lambda v: v["process_id"] < v["num_processes"],
      lambda v: f"--process_id={v['process_id']}: must be in [0, --num_processes)")
_rule(["num_processes", "coordinator_address"],
      lambda v: v["num_processes"] == 1 or bool(v["coordinator_address"]),
      lambda v: "--coordinator_address: required when --num_processes > 1")


def load_click_log() -> click_log.ClickLog:
  if FLAGS.data_format == "synthetic":
    return click_log.synthetic_click_log(FLAGS.synthetic_users, FLAGS.synthetic_items, FLAGS.synthetic_seed)
  return click_log.read_click_log(FLAGS.data_path, FLAGS.data_format, FLAGS.user_col, FLAGS.item_col,
                             FLAGS.time_col)


def model_config(num_items: int):
  from jaxrec.model import ModelConfig
  return ModelConfig(num_items=num_items, seq_length=FLAGS.seq_length, hidden_size=FLAGS.hidden_size,
                     num_attention_heads=FLAGS.num_attention_heads,
                     num_hidden_layers=FLAGS.num_hidden_layers,
                     hidden_dropout_rate=FLAGS.dropout_rate,
                     attention_dropout_rate=FLAGS.attention_dropout_rate,
                     feed_forward_size=FLAGS.feed_forward_size,
                     share_embeddings=FLAGS.share_embeddings, position_order=FLAGS.position_order,
                     embedding_layer_norm=FLAGS.embedding_layer_norm)


def train_config(num_items: int):
  from jaxrec.step import LossConfig
  from jaxrec.train import TrainConfig
  return TrainConfig(model=model_config(num_items), batch_size=FLAGS.batch_size,
                     num_epochs=FLAGS.num_epochs, learning_rate=FLAGS.learning_rate,
                     lr_schedule=FLAGS.lr_schedule, warmup_steps=FLAGS.warmup_steps,
                     weight_decay=FLAGS.weight_decay, grad_clip_norm=FLAGS.grad_clip_norm,
                     seed=FLAGS.seed, checkpoint_every_steps=FLAGS.checkpoint_every_steps,
                     max_to_keep=FLAGS.max_to_keep, log_every_steps=FLAGS.log_every_steps,
                     eval_every_epochs=FLAGS.eval_every_epochs,
                     eval_ks=tuple(int(k) for k in FLAGS.eval_ks),
                     eval_batch_size=FLAGS.eval_batch_size, patience=FLAGS.patience,
                     bucket_lengths=bucket_lengths(),
                     sparse_embedding_updates=FLAGS.sparse_embedding_updates,
                     short_length=FLAGS.short_length,
                     loss=LossConfig(FLAGS.loss, FLAGS.remove_accidental_hits, FLAGS.num_negatives,
                                     FLAGS.negative_distribution, FLAGS.log_q, FLAGS.label_smoothing))


def bucket_lengths() -> tuple:
  return tuple(int(b) for b in FLAGS.bucket_lengths)


def prepare_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir={workdir}: not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise InputError(f"--workdir={workdir}: cannot create: {e.strerror}") from None
  if not os.path.isdir(workdir) or not os.access(workdir, os.W_OK | os.X_OK):
    raise InputError(f"--workdir={workdir}: not a writable directory")


def run_train(log: click_log.ClickLog) -> None:
  from jaxrec import checkpoints
  from jaxrec import train
  source = FLAGS.data_path or "synthetic data"
  split = click_log.leave_one_out(log, source)
  if len(split.train_users) == 0:
    raise InputError(f"{source}: no user has 2 or more training clicks (users with 3 or more "
                     "clicks keep their last 2 for validation and test): nothing to train on")
  config = train_config(log.num_items)
  checkpoints.check_same_model(FLAGS.workdir, config.model)
  prepare_workdir(FLAGS.workdir)
  checkpoints.write_model_config(FLAGS.workdir, config.model)
  click_log.save_vocab(log, os.path.join(FLAGS.workdir, "vocab.npz"))
  try:
    train.train_and_evaluate(config, split, FLAGS.workdir)
  except train.Preempted as e:
    print(f"{PROG}: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


def trained_params(log: click_log.ClickLog):
  """(model config, params) of --checkpoint_step (or the latest) in --workdir."""
  from jaxrec import checkpoints
  config = checkpoints.read_model_config(FLAGS.workdir)
  if config is None:
    raise InputError(f"--workdir={FLAGS.workdir}: no trained model here (no model_config.json)")
  if config.num_items != log.num_items:
    raise InputError(f"--data_path={FLAGS.data_path}: {log.num_items - 1} items, but the model in "
                     f"--workdir={FLAGS.workdir} was trained on {config.num_items - 1}")
  which = checkpoints.BEST if FLAGS.checkpoints == "best" else checkpoints.LATEST
  mgr = checkpoints.manager(FLAGS.workdir, which, writer=False)
  if not mgr.all_steps():
    raise InputError(f"--workdir={FLAGS.workdir}: no checkpoints in {mgr.directory} yet")
  step = FLAGS.checkpoint_step if FLAGS.checkpoint_step is not None else mgr.latest_step()
  if step not in mgr.all_steps():
    raise InputError(f"--checkpoint_step={step}: no such checkpoint in {mgr.directory} "
                     f"(have {sorted(mgr.all_steps())})")
  return config, checkpoints.restore_params(mgr, step), step


def run_eval(log: click_log.ClickLog) -> None:
  from jaxrec import evaluate
  config, params, step = trained_params(log)
  split = click_log.leave_one_out(log, FLAGS.data_path or "synthetic data")
  ks = tuple(int(k) for k in FLAGS.eval_ks)
  with open(os.path.join(FLAGS.workdir, "metrics.jsonl"), "a") as f:
    for which in ("valid", "test"):
      row = {"split": which, "step": step, "mode": "eval",
             **evaluate.evaluate(params, config, split, which, ks, FLAGS.eval_batch_size)}
      evaluate.print_table(row)
      f.write(json.dumps(row) + "\n")


def run_export(log: click_log.ClickLog) -> None:
  from jaxrec import export
  config, params, step = trained_params(log)
  path = FLAGS.output or os.path.join(FLAGS.workdir, "embeddings.npz")
  out_dir = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise InputError(f"--output={path}: is a directory")
  if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
    raise InputError(f"--output={path}: directory {out_dir} is not writable")
  arrays = export.export_embeddings(params, config, log, path, FLAGS.export_until, FLAGS.eval_batch_size)
  console.info("wrote %s: %d users, %d items, checkpoint step %d", path, len(arrays["user_ids"]),
               len(arrays["item_ids"]), step)


def main(argv) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need --)")
  if FLAGS.num_processes > 1:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  log = load_click_log()
  {"train": run_train, "eval": run_eval, "export": run_export}[FLAGS.mode](log)


def run() -> None:
  def guarded(argv):
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and JAX are chatty at INFO
    with exit_on_input_error(PROG):
      main(argv)
  app.run(guarded, flags_parser=flags_parser(PROG))


if __name__ == "__main__":
  run()
