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
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from jaxrec import console
from jaxrec import click_log
from jaxrec import holdout
from jaxrec import errors
from jaxrec import vocab
from jaxrec import xla_options
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
flags.DEFINE_enum("encoder", "spec", ["spec", "bsarec"],
                  "spec: self-attention layers (SPEC); bsarec: each layer mixes self-attention with a causal "
                  "low-pass filter branch, BSARec's frequency-domain inductive bias made causal (filters.py).")
flags.DEFINE_float("bsarec_alpha", 0.5, "--encoder=bsarec: weight of the filter branch (1 - alpha: attention).",
                   lower_bound=0, upper_bound=1)
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
                     "less encoder work on real logs (--layout=rows). 0: off. Not with --bucket_lengths.",
                     lower_bound=0)
flags.DEFINE_list("bucket_lengths", [],
                  "Shorter padded lengths, e.g. 8,16,32: users are batched with others of similar "
                  "length and run at the shortest that holds them (exact, much faster on short logs).")
flags.DEFINE_enum("layout", "auto", ["auto", "packed", "rows", "plain"],
                  "How the encoder and the loss see a batch; each gives the same loss and gradients up "
                  "to float32 rounding. packed: several users per row, each its own segment under a "
                  "block-diagonal causal mask, the lbm logits only at real slots; rows: one user per row, "
                  "logits only at real slots (--short_length splits the rows); plain: the SPEC's literal "
                  "batch, every slot scored. auto: packed where the first epoch shows it at least halves "
                  "the encoder's rows (not with --short_length or --encoder=bsarec), else rows, the short "
                  "ones split off at the length that saves the most encoder work.")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling, negatives and dropout.")
flags.DEFINE_bool("ynn_dots", True, "XLA:CPU hands dot products to the YNNPACK library (jaxlib 0.10.x): "
                  "about 1.7x faster packed in-batch steps on x86, float32 rounding differences only; "
                  "--noynn_dots: XLA's own dots. Explicit XLA_FLAGS for it take precedence.")
flags.DEFINE_integer("prefetch", 2, "Batches the host builds ahead of the device on a background thread (the "
                     "same batches in the same order); 0: build each when its step starts.", lower_bound=0)
flags.DEFINE_string("init_from", "", "Warm start: begin a new --workdir from the model in this workdir (its "
                    "items keep their rows, new items of this log are appended; a fresh optimizer).")
flags.DEFINE_enum("init_checkpoints", "best", ["best", "latest"], "--init_from: which checkpoint to start from.")
flags.DEFINE_integer("checkpoint_every_steps", 1000, "Checkpoint interval (also at every epoch end).",
                     lower_bound=1)
flags.DEFINE_integer("max_to_keep", 3, "Checkpoints kept.", lower_bound=1)
flags.DEFINE_integer("log_every_steps", 50, "Progress line interval.", lower_bound=1)
# Evaluation and export.
flags.DEFINE_integer("eval_every_epochs", 1, "Validate every N epochs; 0: never.", lower_bound=0)
flags.DEFINE_list("eval_ks", ["10", "20", "50"], "Cut-offs K of HR@K and NDCG@K.")
flags.DEFINE_integer("eval_batch_size", 1024, "Users per evaluation block.", lower_bound=1)
flags.DEFINE_integer("patience", 0, "Stop after this many validations without a better --select_metric; "
                     "0: never.", lower_bound=0)
flags.DEFINE_string("select_metric", "ndcg@10", "Validation metric that picks the best checkpoint and drives "
                    "--patience: ndcg@K or hr@K for a K of --eval_ks, or mrr (e.g. hr@200 for a recall stage).")
flags.DEFINE_enum("holdout", "last", ["last", "none"],
                  "last: hold out validation and test clicks as --split says; none: train on every click "
                  "(the model to ship: no validation or test, all --num_epochs).")
flags.DEFINE_enum("split", "leave_one_out", ["leave_one_out", "time"],
                  "leave_one_out: each user's last click tests, the one before validates; time: clicks at "
                  "or after --valid_from validate and at or after --test_from test (needs timestamps).")
flags.DEFINE_string("valid_from", "", "--split=time: first validation time (a number or ISO-8601).")
flags.DEFINE_string("test_from", "", "--split=time: first test time (a number or ISO-8601).")
flags.DEFINE_enum("checkpoints", "auto", ["auto", "latest", "best"],
                  "--mode=eval/export: the best on validation (the model training selected), the latest "
                  "(for resuming), or auto: the best where validation ran, else the latest.")
flags.DEFINE_integer("checkpoint_step", None, "--mode=eval/export: checkpoint step (default: the newest of "
                     "--checkpoints).")
flags.DEFINE_enum("export_until", "none", ["none", "test"],
                  "none: user vectors from the whole history; test: from the clicks before the test item.")
flags.DEFINE_string("output", "", "--mode=export: output path (default <workdir>/embeddings.npz).")
# Run.
flags.DEFINE_string("workdir", "", "Directory of checkpoints, vocabularies, metrics and TensorBoard logs.")
flags.DEFINE_list("allow_changed_flags", [], "Training flags a rerun may change from the run it resumes "
                  "(e.g. num_epochs,learning_rate); any other change is refused.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "export", "export_model", "inspect"],
                  "What to do; export_model: the portable artifact (model_export.py) in --output or "
                  "<workdir>/model; inspect: the log's statistics, load time and memory (no --workdir).")
flags.DEFINE_bool("onnx", False, "--mode=export_model: also write user_tower.onnx (needs the `onnx` extra: "
                  "pip install -e '.[onnx]').")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.", lower_bound=1)
flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.", lower_bound=0)
flags.DEFINE_integer("data_shards", 0, "Split the users into this many shards by a hash of their id, "
                     "each with its own batches of batch_size / data_shards rows; a process holds "
                     "data_shards / num_processes of them and only their users' clicks. 0: "
                     "--num_processes. The batches depend on this, not on the process count: one "
                     "process with --data_shards=N trains as N processes do.", lower_bound=0)

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
_rule(["workdir", "mode"], lambda v: bool(v["workdir"]) or v["mode"] == "inspect",
      lambda v: "--workdir: required")
_rule(["data_format", "data_path", "mode"],
      lambda v: v["data_format"] == "synthetic" or v["mode"] == "export_model" or bool(v["data_path"]),
      lambda v: "--data_path: required unless --data_format=synthetic")
_rule(["eval_ks"], lambda v: _ints(v["eval_ks"]) is not None,
      lambda v: f"--eval_ks={','.join(v['eval_ks'])}: expected integers like 10,20,50")
_rule(["eval_ks"], lambda v: _ints(v["eval_ks"]) is None or min(_ints(v["eval_ks"]), default=0) > 0,
      lambda v: f"--eval_ks={','.join(v['eval_ks'])}: cut-offs must be positive")
def _selectable(v) -> bool:
  metric, ks = v["select_metric"], _ints(v["eval_ks"]) or []
  kind, _, k = metric.partition("@")
  return metric == "mrr" or (kind in ("hr", "ndcg") and k.isdigit() and int(k) in ks)


_rule(["select_metric", "eval_ks", "eval_every_epochs"], lambda v: not v["eval_every_epochs"] or _selectable(v),
      lambda v: f"--select_metric={v['select_metric']}: expected mrr, or hr@K or ndcg@K with K in "
                f"--eval_ks={','.join(v['eval_ks'])}")
_rule(["holdout", "patience"], lambda v: v["holdout"] != "none" or not v["patience"],
      lambda v: f"--patience={v['patience']}: needs validation, which --holdout=none has not")
_rule(["holdout", "split"], lambda v: v["holdout"] != "none" or v["split"] == "leave_one_out",
      lambda v: "--split=time: holds clicks out, which --holdout=none does not")


def _seconds(text: str) -> float | None:
  try:
    return float(click_log.to_seconds(np.array([text.strip()]))[0])
  except ValueError:
    return None


for _name in ("valid_from", "test_from"):
  _rule(["split", _name], lambda v, n=_name: v["split"] != "time" or _seconds(v[n]) is not None,
        lambda v, n=_name: f"--{n}={v[n]}: --split=time needs a number or an ISO-8601 date/time")
_rule(["split", "valid_from", "test_from"],
      lambda v: v["split"] != "time" or None in (_seconds(v["valid_from"]), _seconds(v["test_from"]))
      or _seconds(v["valid_from"]) <= _seconds(v["test_from"]),
      lambda v: f"--valid_from={v['valid_from']}: after --test_from={v['test_from']}")
_rule(["bucket_lengths"], lambda v: _ints(v["bucket_lengths"]) is not None,
      lambda v: f"--bucket_lengths={','.join(v['bucket_lengths'])}: expected integers like 8,16,32")
_rule(["bucket_lengths"], lambda v: all(b > 0 for b in _ints(v["bucket_lengths"]) or []),
      lambda v: f"--bucket_lengths={','.join(v['bucket_lengths'])}: lengths must be positive")
_rule(["short_length", "bucket_lengths"], lambda v: not (v["short_length"] and v["bucket_lengths"]),
      lambda v: "--short_length: choose it or --bucket_lengths, not both")
_rule(["layout", "short_length"], lambda v: not (v["short_length"] and v["layout"] in ("packed", "plain")),
      lambda v: f"--layout={v['layout']}: --short_length splits rows; use --layout=rows or auto with it")
_rule(["layout", "encoder"], lambda v: not (v["layout"] == "packed" and v["encoder"] != "spec"),
      lambda v: f"--layout=packed: not with --encoder={v['encoder']} (its filter spans the whole row)")
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
_rule(["data_shards", "num_processes"], lambda v: (v["data_shards"] or v["num_processes"]) % v["num_processes"] == 0,
      lambda v: f"--data_shards={v['data_shards']}: must be a multiple of --num_processes={v['num_processes']}")
for _name in ("bucket_lengths", "short_length"):
  _rule(["data_shards", "num_processes", _name],
        lambda v, n=_name: (v["data_shards"] or v["num_processes"]) == 1 or not v[n],
        lambda v, n=_name: f"--{n}: not with several data shards (--data_shards, --num_processes), whose "
                           "batches must share one padded length; the default --layout packs instead")
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
                     embedding_layer_norm=FLAGS.embedding_layer_norm, encoder=FLAGS.encoder,
                     bsarec_alpha=FLAGS.bsarec_alpha)


def train_config(num_items: int):
  from jaxrec.step import LossConfig, OptimizerConfig
  from jaxrec.train import TrainConfig
  return TrainConfig(model=model_config(num_items), batch_size=FLAGS.batch_size,
                     num_epochs=FLAGS.num_epochs,
                     optimizer=OptimizerConfig(FLAGS.learning_rate, FLAGS.lr_schedule, FLAGS.warmup_steps,
                                               FLAGS.weight_decay, FLAGS.grad_clip_norm),
                     seed=FLAGS.seed, checkpoint_every_steps=FLAGS.checkpoint_every_steps,
                     max_to_keep=FLAGS.max_to_keep, log_every_steps=FLAGS.log_every_steps,
                     eval_every_epochs=FLAGS.eval_every_epochs,
                     eval_ks=tuple(int(k) for k in FLAGS.eval_ks),
                     eval_batch_size=FLAGS.eval_batch_size, patience=FLAGS.patience,
                     select_metric=FLAGS.select_metric, prefetch=FLAGS.prefetch,
                     bucket_lengths=bucket_lengths(),
                     sparse_embedding_updates=FLAGS.sparse_embedding_updates,
                     short_length=FLAGS.short_length, layout=FLAGS.layout, data_shards=data_shards(),
                     loss=LossConfig(FLAGS.loss, FLAGS.remove_accidental_hits, FLAGS.num_negatives,
                                     FLAGS.negative_distribution, FLAGS.log_q, FLAGS.label_smoothing))


def data_shards() -> int:
  return FLAGS.data_shards or FLAGS.num_processes


def own_share(split: holdout.Split) -> holdout.Split:
  """This process's users of `split` (several processes), with the whole log's item counts."""
  if FLAGS.num_processes == 1:
    return split
  from jaxrec import hosts
  users = hosts.own_users(split.log.user_ids, data_shards())
  console.every_process("holds %d of %d users (data shards %s of %d)", len(users), split.log.num_users,
                        ",".join(map(str, hosts.own_shards(data_shards()))), data_shards())
  return hosts.subset_split(split, users, split.item_counts())


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


# Flags that define the trained model and how it was trained: a resumed run must keep them
# (train_config.json). Data location, logging and checkpoint cadence may change.
TRAIN_FLAGS = ("seq_length", "hidden_size", "num_attention_heads", "num_hidden_layers",
               "feed_forward_size", "dropout_rate", "attention_dropout_rate", "share_embeddings",
               "embedding_layer_norm", "position_order", "encoder", "bsarec_alpha", "batch_size",
               "num_epochs", "learning_rate", "lr_schedule", "warmup_steps", "weight_decay",
               "grad_clip_norm", "loss", "remove_accidental_hits", "num_negatives",
               "negative_distribution", "log_q", "label_smoothing", "sparse_embedding_updates",
               "short_length", "bucket_lengths", "data_shards", "seed", "eval_every_epochs", "eval_ks",
               "patience", "select_metric", "holdout", "split", "valid_from", "test_from",
               "init_from", "init_checkpoints")


def source() -> str:
  return FLAGS.data_path or "synthetic data"


def make_split(log: click_log.ClickLog) -> holdout.Split:
  if FLAGS.holdout == "none":
    return holdout.no_holdout(log)
  if FLAGS.split == "time":
    return holdout.time_split(log, _seconds(FLAGS.valid_from), _seconds(FLAGS.test_from), source())
  return holdout.leave_one_out(log, source())


def data_fingerprint(log: click_log.ClickLog) -> dict:
  size = os.path.getsize(FLAGS.data_path) if FLAGS.data_path else None
  return {"path": os.path.abspath(FLAGS.data_path) if FLAGS.data_path else "synthetic", "bytes": size,
          "clicks": int(len(log.items)), "users": int(log.num_users), "items": int(log.num_items - 1)}


def versions() -> dict:
  import flax
  import jax
  import jaxrec
  return {"jaxrec": jaxrec.__version__, "jax": jax.__version__, "flax": flax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run_train(log: click_log.ClickLog) -> None:
  from jaxrec import checkpoints
  from jaxrec import train
  vocab_path = os.path.join(FLAGS.workdir, "vocab.npz")
  resuming = os.path.exists(vocab_path) and checkpoints.read_model_config(FLAGS.workdir) is not None
  if resuming:
    # Resuming: the log must hold exactly the model's items, read in its rows' order.
    log, alignment = vocab.align_to_vocab(log, vocab.load_item_vocab(vocab_path))
    # A warm-started workdir keeps yesterday's vanished items: missing from the log is expected.
    if alignment.unknown_items or (alignment.missing_items and not FLAGS.init_from):
      raise InputError(f"{source()}: its items differ from those of the model in --workdir={FLAGS.workdir} "
                       f"({alignment.unknown_items} new, {alignment.missing_items} missing): train on it in a "
                       f"new --workdir with --init_from={FLAGS.workdir}")
  base = new_items = None
  # The base model initialises a warm-started run until its first checkpoint exists.
  if FLAGS.init_from and not (resuming and checkpoints.manager(FLAGS.workdir, writer=False).all_steps()):
    from jaxrec import warm_start
    if os.path.abspath(FLAGS.init_from) == os.path.abspath(FLAGS.workdir):
      raise InputError(f"--init_from={FLAGS.init_from}: is --workdir; a warm start trains in a new workdir")
    base = warm_start.read_base(FLAGS.init_from, FLAGS.init_checkpoints)
    warm_start.check_same_shape(base, model_config(base.config.num_items))
    if not resuming:
      item_ids, new_items = warm_start.merge_vocab(base.item_ids, log.item_ids)
      log, _ = vocab.align_to_vocab(log, item_ids)
    console.info("warm start from %s step %d: %d items kept, %d new", FLAGS.init_from, base.step,
                 len(base.item_ids) - 1, log.num_items - len(base.item_ids))
  split = make_split(log)
  if len(split.train_users) == 0:
    raise InputError(f"{source()}: no user has 2 or more training clicks (with --holdout=last, users with "
                     "3 or more clicks keep their last 2 for validation and test): nothing to train on")
  config = train_config(log.num_items)
  train_flags = {name: FLAGS[name].value for name in TRAIN_FLAGS}
  train_flags["data_shards"] = data_shards()  # the batches depend on the resolved count
  checkpoints.check_same_model(FLAGS.workdir, config.model)
  checkpoints.check_train_flags(FLAGS.workdir, train_flags, set(FLAGS.allow_changed_flags))
  prepare_workdir(FLAGS.workdir)
  with errors.writing(f"the run's configuration under {FLAGS.workdir}", "rerun once the cause is cleared"):
    checkpoints.write_model_config(FLAGS.workdir, config.model)
    checkpoints.write_train_flags(FLAGS.workdir, train_flags)
    if not resuming:
      vocab.save_vocab(log, vocab_path, new_items, split.item_counts())
  run_info = {"flags": train_flags, "data": data_fingerprint(log), "versions": versions(),
              "vocab_fingerprint": vocab.vocab_fingerprint(log.item_ids)}
  split = own_share(split)  # several processes: the other users' clicks are dropped here
  del log
  try:
    train.train_and_evaluate(config, split, FLAGS.workdir, run_info, base and base.params)
  except train.Preempted as e:
    print(f"{PROG}: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


def model_checkpoint():
  """(model config, checkpoint manager, step) that --checkpoints and --checkpoint_step name."""
  from jaxrec import checkpoints
  return checkpoints.select(FLAGS.workdir, FLAGS.checkpoints, FLAGS.checkpoint_step)


def in_model_ids(log: click_log.ClickLog, config) -> click_log.ClickLog:
  """The log through the workdir's vocabulary: clicks on items the model lacks are skipped."""
  vocab_path = os.path.join(FLAGS.workdir, "vocab.npz")
  if not os.path.exists(vocab_path):
    raise InputError(f"--workdir={FLAGS.workdir}: no vocab.npz, so the item rows have no ids")
  item_ids = vocab.load_item_vocab(vocab_path)
  if len(item_ids) != config.num_items:
    raise InputError(f"{vocab_path}: {len(item_ids) - 1} items, but model_config.json says {config.num_items - 1}")
  aligned, alignment = vocab.align_to_vocab(log, item_ids)
  if not len(aligned.items):
    raise InputError(f"{source()}: none of its {log.num_items - 1} items is an item of the model in "
                     f"--workdir={FLAGS.workdir} (renamed ids?)")
  if alignment.unknown_clicks:
    console.info("%s: skipped %d clicks on %d items the model does not know (%d users left with none)",
                 source(), alignment.unknown_clicks, alignment.unknown_items, alignment.dropped_users)
  return aligned


def run_eval(log: click_log.ClickLog) -> None:
  from jaxrec import evaluate
  if FLAGS.holdout == "none":
    raise InputError("--mode=eval: --holdout=none holds nothing out to evaluate")
  from jaxrec import checkpoints
  config, mgr, step = model_checkpoint()
  split = own_share(make_split(in_model_ids(log, config)))
  del log
  params = checkpoints.restore_params(mgr, step)
  ks = tuple(int(k) for k in FLAGS.eval_ks)
  rows = [{"split": which, "step": step, "mode": "eval",
           **evaluate.evaluate(params, config, split, which, ks, FLAGS.eval_batch_size)}
          for which in ("valid", "test")]
  if not console.is_main_process():
    return
  path = os.path.join(FLAGS.workdir, "metrics.jsonl")
  with errors.writing(path, "the evaluation printed above is complete"), open(path, "a") as f:
    for row in rows:
      evaluate.print_table(row)
      f.write(json.dumps(row) + "\n")


def run_export(log: click_log.ClickLog) -> None:
  import dataclasses
  from jaxrec import checkpoints
  from jaxrec import export
  config, mgr, step = model_checkpoint()
  path = FLAGS.output or os.path.join(FLAGS.workdir, "embeddings.npz")
  out_dir = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise InputError(f"--output={path}: is a directory")
  if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
    raise InputError(f"--output={path}: directory {out_dir} is not writable")
  log = in_model_ids(log, config)
  params = checkpoints.restore_params(mgr, step)
  metadata = {"step": step, "model_config": json.dumps(dataclasses.asdict(config), sort_keys=True),
              "vocab_fingerprint": vocab.vocab_fingerprint(log.item_ids)}
  shard = {}
  if FLAGS.num_processes > 1:  # each process its own users' vectors; the first writes them all
    from jaxrec import hosts
    users = hosts.own_users(log.user_ids, data_shards())
    console.every_process("exports %d of %d users", len(users), log.num_users)
    shard = {"user_index": users, "user_ids": log.user_ids}
    log = hosts.subset_log(log, users)
  with errors.writing(path, "nothing was written there"):
    arrays = export.export_embeddings(params, config, log, path, FLAGS.export_until, FLAGS.eval_batch_size,
                                      metadata, **shard)
  if not arrays:
    return
  console.info("wrote %s: %d users, %d items, checkpoint step %d", path, len(arrays["user_ids"]),
               len(arrays["item_ids"]), step)


def run_export_model(log: click_log.ClickLog) -> None:
  """Writes the portable artifact; the log is not read (the vocabulary holds the catalog)."""
  del log
  from jaxrec import model_export
  config, mgr, step = model_checkpoint()
  directory = FLAGS.output or os.path.join(FLAGS.workdir, "model")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise InputError(f"--output={directory}: not a directory")
  if FLAGS.onnx:
    try:
      import jax2onnx  # noqa: F401
    except ImportError:
      raise InputError("--onnx: needs the onnx extra (pip install -e '.[onnx]')") from None
  with errors.writing(f"the model artifact under {directory}", "files written before it are whole"):
    paths = model_export.export_workdir(FLAGS.workdir, config, mgr, step, directory, FLAGS.onnx)
  console.info("wrote %s: %s (checkpoint step %d)", directory, ", ".join(os.path.basename(p) for p in paths),
               step)


def run_inspect(log: click_log.ClickLog, load_s: float) -> None:
  """What a user runs first on a new log: its shape, and what --seq_length would pad."""
  import resource
  print("\n".join([f"{source()}: " + click_log.describe(log, FLAGS.seq_length),
                   f"loaded in {load_s:.2f} s, peak RSS "
                   f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"]))


def main(argv) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need --)")
  xla_options.use_ynn_dots(FLAGS.ynn_dots)  # before the backend starts
  if FLAGS.num_processes > 1:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.mode == "export_model":
    return run_export_model(None)
  if FLAGS.mode == "inspect":
    start = time.perf_counter()
    log = load_click_log()
    return run_inspect(log, time.perf_counter() - start)
  # Not kept here: a multi-process run drops the other processes' users once it has split them.
  {"train": run_train, "eval": run_eval, "export": run_export}[FLAGS.mode](load_click_log())


def run() -> None:
  def guarded(argv):
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and JAX are chatty at INFO
    with exit_on_input_error(PROG):
      main(argv)
  app.run(guarded, flags_parser=flags_parser(PROG))


if __name__ == "__main__":
  run()
