"""One configuration tree: every option of jaxrec, with its default, help, bounds and checks, once.

Sections by concern are frozen dataclasses; each field is an `option` carrying its default, its
help text, its bounds or choices and whether a resumed run must keep it (`kept`). A field whose
non-default value only means something beside another setting says so (`only`), and such a value
elsewhere is refused, never silently ignored. Checks that span fields live in the section (or in
`Config`) that holds them. Every check raises InputError naming the flags, so the command line
exits 2 and the Python API raises.

The command-line flags are generated from the fields (config_flags.py): a flag is named as its
field (or the field's `flag=`), so a flagfile is the tree written flat.

This module sits below the library (it imports only plumbing and `clicks`' time parsing), so
that each library module takes its own section type from here; none reads flags.
"""

import dataclasses

import numpy as np

from jaxrec import clicks
from jaxrec.errors import InputError

_FLOAT32_MAX = float(np.finfo(np.float32).max)  # the step casts the learning rate to float32
DATA_FORMATS = ("auto", "note", "sequences", "pairs", "csv", "parquet", "synthetic")
SEPARATORS = {"comma": ",", "tab": "\t", "semicolon": ";", "pipe": "|"}  # --separator's names and characters
SERVE_BATCH_SIZES = (1, 8, 64)  # batch sizes serve compiles its encoder for; a batch runs at the smallest


def option(default, help: str, *, flag: str | None = None, lower=None, upper=None, choices=None,
           kept: bool = False, only=None, example: str = ""):
  """A configuration field. `only=(predicate(config) -> bool, words)`: a non-default value is
  refused where the predicate is false ("--flag=value: only for <words>"); `example` shows the
  form of a list value."""
  return dataclasses.field(default=default, metadata=dict(
      help=help, flag=flag, lower=lower, upper=upper, choices=choices, kept=kept, only=only,
      example=example))


def options(section) -> list:
  """The option fields of a section (class or instance), in definition order."""
  return [f for f in dataclasses.fields(section) if "help" in f.metadata]


def flag_name(f: dataclasses.Field) -> str:
  return f.metadata["flag"] or f.name


def flag_text(value) -> str:
  """A value as it is written on the command line."""
  if isinstance(value, (tuple, list)):
    return ",".join(map(str, value))
  if isinstance(value, bool):
    return str(value).lower()
  return "" if value is None else str(value)


def _check_options(section) -> None:
  """Bounds and choices of every option of `section`, for configs built in Python (the flags
  parser checks the same before)."""
  for f in options(section):
    value, name, m = getattr(section, f.name), flag_name(f), f.metadata
    values = value if isinstance(value, tuple) else () if value is None else (value,)
    for v in values:
      if m["choices"] is not None and v not in m["choices"]:
        raise InputError(f"--{name}={flag_text(value)}: expected one of {', '.join(m['choices'])}")
      if isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      if (m["lower"] is not None and not v >= m["lower"]) or (m["upper"] is not None and not v <= m["upper"]):
        bounds = f"[{m['lower'] if m['lower'] is not None else '-inf'}, {m['upper'] if m['upper'] is not None else 'inf'}]"
        raise InputError(f"--{name}={flag_text(value)}: must be in {bounds}")


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise InputError(message)


def _in_unit_interval(section, *names) -> None:
  for name in names:
    value = getattr(section, name)
    _require(0 <= value < 1, f"--{name}={value}: must be in [0, 1)")


def seconds(text: str) -> float | None:
  """A --valid_from / --test_from value in seconds, None if it is not a time."""
  try:
    return float(clicks.to_seconds(np.array([text.strip()]))[0])
  except ValueError:
    return None


class Section:
  """Checks its options' bounds and choices on construction, then its own rules (`check`)."""

  def __post_init__(self):
    _check_options(self)
    self.check()

  def check(self) -> None:
    pass


# ----------------------------------------------------------------------------- main's sections


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
  """Which clicks, and which of them train, validate and test."""
  data_path: str = option(
      "", "Click log to train on: a file, or a directory of Parquet files (not with "
      "--data_format=synthetic).", only=(lambda c: c.data.data_format != "synthetic",
                                         "a file's --data_format, not --data_format=synthetic (the built-in "
                                         "clicks): pass --data_format=auto to train on the file"))
  data_format: str = option(
      "auto", "note: `user:[i1,i2]` lines; sequences: `user i1 i2 ...` lines; pairs: `user item [time]` "
      "lines; csv: header + --user_col/--item_col/--time_col; parquet; synthetic: built-in generated "
      "clicks; auto: detect from the file.", choices=DATA_FORMATS)
  user_col: str = option("user", "CSV / Parquet column of user ids.", kept=True, only=(
      lambda c: c.data.data_format in ("auto", "csv", "parquet"), "--data_format=csv or parquet"))
  item_col: str = option("item", "CSV / Parquet column of item ids.", kept=True, only=(
      lambda c: c.data.data_format in ("auto", "csv", "parquet"), "--data_format=csv or parquet"))
  time_col: str = option("", "CSV / Parquet column of timestamps (optional; sorts each user's clicks).",
                         kept=True, only=(lambda c: c.data.data_format in ("auto", "csv", "parquet"),
                               "--data_format=csv or parquet"))
  separator: str = option("auto", "CSV field separator; auto: the one of comma, tab, semicolon or pipe "
                          "that splits the header line into --user_col and --item_col.",
                          choices=("auto", *SEPARATORS), only=(lambda c: c.data.data_format in ("auto", "csv"),
                                                    "--data_format=csv"))
  nulls: str = option("refuse", "A click whose user, item or time is empty, NULL, null, NA, NaN, None or "
                      "N/A (CSV, pairs, Parquet): refuse names its file and line; drop leaves it out and "
                      "counts it.", choices=("refuse", "drop"), kept=True,
                      only=(lambda c: c.data.data_format != "synthetic", "a file's --data_format"))
  shard_by: str = option("user_hash", "How the users are split into --data_shards. user_hash: by a hash of the "
                         "user id, every process reading the whole log; file: a Parquet directory whose files each "
                         "hold whole users (as Spark's repartition(n, \"user\") writes it): shard s is the files i "
                         "with i % --data_shards == s, and a process reads only its shards' files (and the item "
                         "column of every file, for the vocabulary).", choices=("user_hash", "file"), kept=True,
                         only=(lambda c: c.data.data_format in ("auto", "parquet"), "a Parquet directory"))
  holdout: str = option("last", "last: hold out validation and test clicks as --split says; none: train on "
                        "every click (the model to ship: no validation or test, all --num_epochs).",
                        choices=("last", "none"), kept=True)
  split: str = option("leave_one_out", "leave_one_out: each user's last click tests, the one before "
                      "validates; time: clicks at or after --valid_from validate and at or after --test_from "
                      "test (needs timestamps).", choices=("leave_one_out", "time"), kept=True)
  valid_from: str = option("", "--split=time: first validation time (a number or ISO-8601).", kept=True,
                           only=(lambda c: c.data.split == "time", "--split=time"))
  test_from: str = option("", "--split=time: first test time (a number or ISO-8601).", kept=True,
                          only=(lambda c: c.data.split == "time", "--split=time"))
  synthetic_users: int = option(5000, "Users of the synthetic click log.", lower=1,
                                only=(lambda c: c.data.data_format == "synthetic", "--data_format=synthetic"))
  synthetic_items: int = option(1000, "Items of the synthetic click log.", lower=1,
                                only=(lambda c: c.data.data_format == "synthetic", "--data_format=synthetic"))
  synthetic_seed: int = option(0, "Seed of the synthetic click log.",
                               only=(lambda c: c.data.data_format == "synthetic", "--data_format=synthetic"))

  def check(self):
    _require(self.holdout != "none" or self.split == "leave_one_out",
             "--split=time: holds clicks out, which --holdout=none does not")
    if self.split == "time":
      for name in ("valid_from", "test_from"):
        _require(seconds(getattr(self, name)) is not None,
                 f"--{name}={getattr(self, name)}: --split=time needs a number or an ISO-8601 date/time")
      _require(seconds(self.valid_from) <= seconds(self.test_from),
               f"--valid_from={self.valid_from}: after --test_from={self.test_from}")

  @property
  def source(self) -> str:
    """How messages name the clicks."""
    return self.data_path if self.data_format != "synthetic" else "synthetic data"


@dataclasses.dataclass(frozen=True)
class FeaturesConfig(Section):
  """Item side features: what the catalog knows about each item (item_features.py reads them)."""
  item_features: str = option(
      "", "Item feature table: `item value value ...` lines (.txt), a CSV with --feature_item_col and "
      "feature columns (.csv/.tsv), or Parquet (a file or directory; list columns hold several values). An "
      "item's vector becomes its id vector plus its pooled feature vectors; items only the table names join "
      "the catalog as cold items, scored by their features alone.", kept=True)
  feature_item_col: str = option("item", "Item id column of a CSV / Parquet --item_features table.", kept=True,
                                 only=(lambda c: bool(c.features.item_features), "--item_features"))
  feature_separator: str = option("|", "Separator of several values in one CSV cell of --item_features.",
                                  kept=True, only=(lambda c: bool(c.features.item_features), "--item_features"))

  def check(self):
    _require(len(self.feature_separator) == 1 and not self.feature_separator.isspace(),
             f"--feature_separator={self.feature_separator!r}: must be one character, not a space")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
  """Model hyperparameters (defaults: SPEC section 8). num_items is the data's, not a flag."""
  num_items: int = 0  # item table rows, padding row 0 included; set from the vocabulary
  seq_length: int = option(70, "Most recent clicks the encoder reads (L).", lower=1, kept=True)
  hidden_size: int = option(64, "Embedding and hidden size (D).", lower=1, kept=True)
  num_attention_heads: int = option(2, "Attention heads (H); must divide --hidden_size.", lower=1, kept=True)
  num_hidden_layers: int = option(2, "Self-attention encoder layers.", lower=1, kept=True)
  hidden_dropout_rate: float = option(0.0, "Dropout on embeddings and sub-layer outputs.",
                                      flag="dropout_rate", kept=True)
  attention_dropout_rate: float = option(0.0, "Dropout on attention probabilities.", kept=True)
  feed_forward_size: int = option(0, "Inner size of a feed-forward sub-layer per layer; 0: none (SPEC; "
                                  "SASRec uses 4 * --hidden_size).", lower=0, kept=True)
  share_embeddings: bool = option(False, "Tie outputs_embedding to item_embeddings.", kept=True)
  position_order: str = option("forward", "forward: first real item has position 0; backward: the most "
                               "recent has 0.", choices=("forward", "backward"), kept=True)
  embedding_layer_norm: bool = option(False, "LayerNorm on item + position embeddings before the first layer "
                                      "(as BERT and S3Rec-style SASRec code).", kept=True)
  encoder: str = option("spec", "spec: self-attention layers (SPEC); bsarec: each layer mixes self-attention "
                        "with a causal low-pass filter branch, BSARec's frequency-domain inductive bias made "
                        "causal (filters.py).", choices=("spec", "bsarec"), kept=True)
  bsarec_alpha: float = option(0.5, "--encoder=bsarec: weight of the filter branch (1 - alpha: attention).",
                               lower=0, upper=1, kept=True,
                               only=(lambda c: c.model.encoder == "bsarec", "--encoder=bsarec"))
  id_dropout: float = option(0.1, "With --item_features: share of items whose id vector is left out of a "
                             "training step (the same items on the input and output side), so that the "
                             "feature vectors alone place an item as cold items need.", kept=True,
                             only=(lambda c: bool(c.features.item_features), "--item_features"))
  initializer_range: float = 0.02
  layer_norm_epsilon: float = 1e-12
  # Set from the feature table, as num_items from the vocabulary: rows of each field's value
  # table (padding row 0 included); () without --item_features.
  feature_sizes: tuple[int, ...] = ()
  # The rows' feature values (item_features.ItemFeatureRows), attached where the model is built
  # from a workdir (checkpoints.read_model_config); data, not a setting: not saved with the
  # config. Compared and hashed by identity, so a cache keyed by the config (evaluate's jitted
  # user tower) never serves one table's model for another's.
  item_features: object = dataclasses.field(default=None, repr=False)

  def check(self):
    _in_unit_interval(self, "attention_dropout_rate", "id_dropout")
    if self.item_features is not None:
      _require(tuple(self.item_features.sizes) == tuple(self.feature_sizes),
               f"feature tables of {self.item_features.sizes} values, the model config says {self.feature_sizes}")
    _require(0 <= self.hidden_dropout_rate < 1, f"--dropout_rate={self.hidden_dropout_rate}: must be in [0, 1)")
    _require(self.hidden_size % self.num_attention_heads == 0,
             f"--hidden_size={self.hidden_size} is not divisible by "
             f"--num_attention_heads={self.num_attention_heads}")

  def as_dict(self) -> dict:
    """The saved fields (model_config.json): the feature rows are saved beside, in features.npz."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "item_features"}


@dataclasses.dataclass(frozen=True)
class LossConfig(Section):
  """Which softmax the model is trained with (the SPEC's is the default)."""
  kind: str = option("inbatch", "inbatch: in-batch softmax with logQ (SPEC); mixed: plus --num_negatives "
                     "sampled items shared by the batch; full: softmax over the whole catalog.",
                     flag="loss", choices=("inbatch", "mixed", "full"), kept=True)
  remove_accidental_hits: bool = option(False, "Drop candidates equal to the row's own label.", kept=True)
  num_negatives: int = option(256, "--loss=mixed: sampled items per step.", lower=1, kept=True,
                              only=(lambda c: c.loss.kind == "mixed", "--loss=mixed"))
  negative_distribution: str = option("uniform", "--loss=mixed: how the extra items are drawn: uniform over the "
                                      "catalog; popularity: in proportion to training clicks to the power "
                                      "--negative_alpha; mix: --negative_uniform_share of uniform, the rest by "
                                      "popularity. Each drawn item's logit is corrected by log(N q).",
                                      choices=("uniform", "popularity", "mix"), kept=True,
                                      only=(lambda c: c.loss.kind == "mixed", "--loss=mixed"))
  negative_alpha: float = option(1.0, "--negative_distribution=popularity or mix: the power of the click "
                                 "counts (0: uniform over clicked items, 1: as clicked).", lower=0, upper=1,
                                 kept=True, only=(lambda c: c.loss.negative_distribution in ("popularity", "mix"),
                                                  "--negative_distribution=popularity or mix"))
  negative_uniform_share: float = option(0.5, "--negative_distribution=mix: the share of the proposal that is "
                                         "uniform over the catalog.", lower=0, upper=1, kept=True,
                                         only=(lambda c: c.loss.negative_distribution == "mix",
                                               "--negative_distribution=mix"))
  log_q: str = option("standard", "--loss=inbatch/mixed: standard logQ (SPEC: every candidate minus log q) "
                      "or the corrected logQ of Khrylchenko et al. (RecSys 2025).",
                      choices=("standard", "corrected"), kept=True,
                      only=(lambda c: c.loss.kind != "full",
                            "--loss=inbatch or mixed (the full softmax samples nothing)"))
  label_smoothing: float = option(0.0, "--loss=full: share of the target spread evenly over all items "
                                  "instead of the clicked one.", kept=True,
                                  only=(lambda c: c.loss.kind == "full",
                                        "--loss=full (a sampled softmax has no catalog to spread over)"))

  def check(self):
    _in_unit_interval(self, "label_smoothing")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
  """Adam(W) with a warm-up, an optional schedule and gradient clipping, or row-sparse Adam."""
  learning_rate: float = option(1e-3, "Peak Adam learning rate.", kept=True)
  lr_schedule: str = option("constant", "Schedule after warm-up.", choices=("constant", "cosine"), kept=True)
  warmup_steps: int = option(0, "Linear warm-up steps.", lower=0, kept=True)
  weight_decay: float = option(0.0, "AdamW decoupled weight decay.", lower=0, kept=True)
  grad_clip_norm: float = option(0.0, "Clip gradients to this global norm; 0: no clipping.", lower=0, kept=True)
  sparse_embedding_updates: bool = option(
      False, "Row-sparse (lazy) Adam on the item tables: each step updates only the rows its batch touches, "
      "so step cost stops growing with the catalog (not with --loss=full, --weight_decay or "
      "--grad_clip_norm, which the sparse rows would not get).", kept=True)
  b2: float = 0.999

  def check(self):
    _require(0 < self.learning_rate <= _FLOAT32_MAX,
             f"--learning_rate={self.learning_rate}: must be positive and finite in float32")
    # The sparse step runs its own Adam on the touched rows: decoupled weight decay and
    # global-norm clipping would reach only the dense parameters, so they are refused.
    for name in ("weight_decay", "grad_clip_norm"):
      _require(not (self.sparse_embedding_updates and getattr(self, name)),
               f"--sparse_embedding_updates: does not combine with --{name}={getattr(self, name)}, which "
               "its row-sparse Adam does not apply to the item tables")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
  """How long, from where, and how often a run saves and reports."""
  num_epochs: int = option(10, "Passes over the training users.", lower=1, kept=True)
  seed: int = option(0, "Seed of initialisation, shuffling, negatives and dropout.", kept=True)
  init_from: str = option("", "Warm start: begin a new --workdir from the model in this workdir (its items "
                          "keep their rows, new items of this log are appended; a fresh optimizer).", kept=True)
  init_checkpoints: str = option("auto", "--init_from: which checkpoint to start from: the best on "
                                 "validation, the latest, or auto: the best where validation ran, else the latest.",
                                 choices=("auto", "best", "latest"), kept=True,
                                 only=(lambda c: bool(c.train.init_from), "--init_from"))
  checkpoint_every_steps: int = option(1000, "Checkpoint interval (also at every epoch end).", lower=1)
  max_to_keep: int = option(3, "Checkpoints kept.", lower=1)
  log_every_steps: int = option(50, "Progress line interval.", lower=1)


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
  """Validation during training, model selection, and which checkpoint eval and export read."""
  eval_every_epochs: int = option(1, "Validate every N epochs; 0: never.", lower=0, kept=True)
  eval_ks: tuple[int, ...] = option((10, 20, 50), "Cut-offs K of HR@K and NDCG@K.", lower=1, kept=True,
                                    example="10,20,50")
  eval_batch_size: int = option(1024, "Users per evaluation block.", lower=1)
  patience: int = option(0, "Stop after this many validations without a better --select_metric; 0: never.",
                         lower=0, kept=True)
  select_metric: str = option("ndcg@10", "Validation metric that picks the best checkpoint and drives "
                              "--patience: ndcg@K or hr@K for a K of --eval_ks, or mrr (e.g. hr@200 for a "
                              "recall stage).", kept=True)
  checkpoints: str = option("auto", "--mode=eval/export: the best on validation (the model training "
                            "selected), the latest (for resuming), or auto: the best where validation ran, "
                            "else the latest.", choices=("auto", "latest", "best"))
  checkpoint_step: int | None = option(None, "--mode=eval/export: checkpoint step (default: the newest of "
                                       "--checkpoints).", lower=0)
  export_until: str = option("none", "none: user vectors from the whole history; test: from the clicks "
                             "before the test item.", choices=("none", "test"))
  eval_users: int = option(0, "Validate (and stop early) on this many of the users with a validation target, "
                           "a fixed sample drawn with --seed; 0: every one. Full ranking costs users x items "
                           "a validation: a sample bounds it on large logs.", lower=0, kept=True)
  test_users: str = option("all", "Which users the test ranks: all of them, or the --eval_users sample (where "
                           "they have a test target).", choices=("all", "sample"), kept=True,
                           only=(lambda c: bool(c.eval.eval_users), "--eval_users"))

  def check(self):
    kind, _, k = self.select_metric.partition("@")
    selectable = self.select_metric == "mrr" or (kind in ("hr", "ndcg") and k.isdigit() and int(k) in self.eval_ks)
    _require(not self.eval_every_epochs or selectable,
             f"--select_metric={self.select_metric}: expected mrr, or hr@K or ndcg@K with K in "
             f"--eval_ks={flag_text(self.eval_ks)}")


@dataclasses.dataclass(frozen=True)
class BatchingConfig(Section):
  """How batches are cut and laid out, and the speed knobs that leave the loss as it is."""
  batch_size: int = option(198, "Sequences per global batch (B).", lower=1, kept=True)
  data_shards: int = option(
      0, "Split the users into this many shards by a hash of their id, each with its own batches of "
      "batch_size / data_shards rows; a process holds data_shards / num_processes of them and only their "
      "users' clicks. 0: --num_processes. The batches depend on this, not on the process count: one "
      "process with --data_shards=N trains as N processes do.", lower=0, kept=True)
  layout: str = option(
      "auto", "How the encoder and the loss see a batch; each gives the same loss and gradients up to "
      "float32 rounding. packed: several users per row, each its own segment under a block-diagonal causal "
      "mask, the lbm logits only at real slots; rows: one user per row, logits only at real slots "
      "(--short_length splits the rows); plain: the SPEC's literal batch, every slot scored. auto: packed "
      "where the first epoch shows it at least halves the encoder's rows (not with --short_length or "
      "--encoder=bsarec), else rows, the short ones split off at the length that saves the most encoder "
      "work.", choices=("auto", "packed", "rows", "plain"))
  short_length: int = option(
      0, "Run the encoder on each batch's shorter rows at this padded length (e.g. 16) and on its few "
      "longest at --seq_length: the same batches and loss, several times less encoder work on real logs "
      "(--layout=rows). 0: off. Not with --bucket_lengths.", lower=0, kept=True)
  bucket_lengths: tuple[int, ...] = option(
      (), "Shorter padded lengths, e.g. 8,16,32: users are batched with others of similar length and run "
      "at the shortest that holds them (exact, much faster on short logs).", lower=1, kept=True,
      example="8,16,32")
  prefetch: int = option(2, "Batches the host builds ahead of the device on a background thread (the same "
                         "batches in the same order); 0: build each when its step starts.", lower=0)
  ynn_dots: bool = option(True, "XLA:CPU hands dot products to the YNNPACK library (jaxlib 0.10.x): about "
                          "1.7x faster packed in-batch steps on x86, float32 rounding differences only; "
                          "--noynn_dots: XLA's own dots. Explicit XLA_FLAGS for it take precedence.")

  def check(self):
    _require(not (self.short_length and self.bucket_lengths), "--short_length: choose it or --bucket_lengths, not both")
    _require(not (self.short_length and self.layout in ("packed", "plain")),
             f"--layout={self.layout}: --short_length splits rows; use --layout=rows or auto with it")


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
  """What to do, where the run's files live, and the processes of a multi-host run."""
  workdir: str = option("", "Directory of the run's checkpoints, vocabulary, metrics and TensorBoard logs.")
  mode: str = option("train", "What to do; export_model: the portable artifact (model_export.py) in --output "
                     "or <workdir>/model; inspect: the log's statistics, load time and memory (no --workdir).",
                     choices=("train", "eval", "export", "export_model", "inspect"))
  output: str = option("", "--mode=export: output path (default <workdir>/embeddings.npz); "
                       "--mode=export_model: a directory (default <workdir>/model).")
  publish: str = option("", "After the run (or export) succeeds, point this symlink at --workdir, atomically "
                        "(e.g. runs/current, which jaxrec.serve --workdir=runs/current follows on reload); a "
                        "run that fails leaves it as it was.",
                        only=(lambda c: c.run.mode in ("train", "export"), "--mode=train or export"))
  onnx: bool = option(False, "--mode=export_model: also write user_tower.onnx (needs the `onnx` extra: "
                      "pip install -e '.[onnx]').")
  allow_changed_flags: tuple[str, ...] = option(
      (), "Training flags a rerun may change from the run it resumes (e.g. num_epochs,learning_rate); any "
      "other change is refused.", example="num_epochs,learning_rate")
  coordinator_address: str = option("", "host:port of process 0, for multi-process runs.")
  num_processes: int = option(1, "Processes in a multi-process run.", lower=1)
  process_id: int = option(0, "This process's index in a multi-process run.", lower=0)

  def check(self):
    _require(self.process_id < self.num_processes,
             f"--process_id={self.process_id}: must be in [0, --num_processes)")
    _require(self.num_processes == 1 or bool(self.coordinator_address),
             "--coordinator_address: required when --num_processes > 1")


@dataclasses.dataclass(frozen=True)
class Config:
  """The whole configuration of a jaxrec run (the tree `jaxrec.main`'s flags fill)."""
  data: DataConfig = DataConfig()
  run: RunConfig = RunConfig()
  features: FeaturesConfig = FeaturesConfig()
  model: ModelConfig = ModelConfig()
  loss: LossConfig = LossConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  batching: BatchingConfig = BatchingConfig()

  def __post_init__(self):
    for section in self.sections():
      for f in options(section):
        value, only = getattr(section, f.name), f.metadata["only"]
        if only and value != f.default and not only[0](self):
          raise InputError(f"--{flag_name(f)}={flag_text(value)}: only for {only[1]}")
    d, m, b, o = self.data, self.model, self.batching, self.optimizer
    _require(d.holdout != "none" or not self.eval.patience,
             f"--patience={self.eval.patience}: needs validation, which --holdout=none has not")
    _require(b.short_length < m.seq_length, f"--short_length={b.short_length}: must be in [0, --seq_length)")
    _require(not (b.layout == "packed" and m.encoder != "spec"),
             f"--layout=packed: not with --encoder={m.encoder} (its filter spans the whole row)")
    _require(not (o.sparse_embedding_updates and self.features.item_features),
             "--sparse_embedding_updates: does not combine with --item_features, whose feature tables every "
             "item's vector reads")
    _require(not (o.sparse_embedding_updates and self.loss.kind == "full"),
             "--sparse_embedding_updates: does not combine with --loss=full, which reads every row")
    _require((b.data_shards or self.run.num_processes) % self.run.num_processes == 0,
             f"--data_shards={b.data_shards}: must be a multiple of --num_processes={self.run.num_processes}")
    for name in ("bucket_lengths", "short_length"):
      _require(self.data_shards == 1 or not getattr(b, name),
               f"--{name}: not with several data shards (--data_shards, --num_processes), whose batches "
               "must share one padded length; the default --layout packs instead")

  def check_runnable(self, mode: str) -> None:
    """What running `mode` needs besides a consistent tree: a workdir and clicks to read."""
    _require(bool(self.run.workdir) or mode == "inspect", "--workdir: required")
    _require(self.data.data_format == "synthetic" or mode == "export_model" or bool(self.data.data_path),
             "--data_path: required unless --data_format=synthetic")

  def sections(self) -> tuple:
    return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

  @property
  def data_shards(self) -> int:
    """The resolved shard count: --data_shards, or one per process."""
    return self.batching.data_shards or self.run.num_processes

  def replace(self, **sections) -> "Config":
    """A copy with sections' fields changed: replace(model={"hidden_size": 32}, run={...})."""
    return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **fields)
                                        for name, fields in sections.items()})

  def kept(self) -> dict:
    """The values a resumed run must keep, by flag name, as train_config.json records them
    (lists as lists of strings, as the flags give them; data_shards resolved)."""
    out = {}
    for section in self.sections():
      for f in options(section):
        if f.metadata["kept"]:
          value = getattr(section, f.name)
          out[flag_name(f)] = [str(v) for v in value] if isinstance(value, tuple) else value
    out["data_shards"] = self.data_shards
    if not self.train.init_from:
      del out["init_checkpoints"]  # means nothing without --init_from (and its default changed)
    if not self.eval.eval_users:
      del out["test_users"]  # means nothing without a sample
    if self.data.shard_by == "user_hash":
      del out["shard_by"]  # the only way before the option (and what old runs recorded nothing for)
    if self.loss.negative_distribution not in ("popularity", "mix"):  # as above: added later, mean nothing
      del out["negative_alpha"]
    if self.loss.negative_distribution != "mix":
      del out["negative_uniform_share"]
    if not self.features.item_features:  # mean nothing without a feature table
      for name in ("feature_item_col", "feature_separator", "id_dropout"):
        del out[name]
    return out


def make(base: Config = Config(), **values) -> Config:
  """`base` with options changed by flag name, e.g. make(data_path="clicks.csv", workdir="runs/x",
  hidden_size=32, eval_ks=(10, 50)); a whole section may be passed by its name (model=ModelConfig(...))."""
  sections = {f.name: {} for f in dataclasses.fields(Config)}
  whole = {}
  for name, value in values.items():
    if name in sections and isinstance(value, Section):
      whole[name] = value
      continue
    where = [(s.name, f.name) for s in dataclasses.fields(Config) for f in options(s.type) if flag_name(f) == name]
    if not where:
      raise InputError(f"{name}: not an option of jaxrec (python -m jaxrec.main --help lists them)")
    sections[where[0][0]][where[0][1]] = value
  return dataclasses.replace(base, **{name: dataclasses.replace(whole.get(name, getattr(base, name)), **fields)
                                      for name, fields in sections.items()})


# ----------------------------------------------------------------------------- recall and serve


@dataclasses.dataclass(frozen=True)
class IndexConfig(Section):
  """Which faiss index to search; `flat` is exact, `ivf` and `hnsw` approximate."""
  kind: str = option("flat", "flat: exact IndexFlatIP; ivf, hnsw: approximate.", flag="index",
                     choices=("flat", "ivf", "hnsw"))
  ivf_nlist: int | None = option(None, "IVF lists; default about 4*sqrt(items), at most items/39.", lower=1)
  ivf_nprobe: int = option(32, "IVF lists searched per user.", lower=1)
  hnsw_m: int = option(32, "HNSW neighbours per node.", lower=1)
  hnsw_ef_search: int = option(256, "HNSW search breadth.", lower=1)
  hnsw_ef_construction: int = option(40, "HNSW build breadth.", lower=1)


@dataclasses.dataclass(frozen=True)
class RecallConfig(Section):
  """jaxrec.recall: top-N unvisited items per user from an exported .npz."""
  embeddings: str = option("", "Exported .npz with user/item vectors and visits.")
  output: str = option("", "Where to write the lists, in the format its suffix names: .tsv or .txt "
                       "(user<TAB>item1,item2,...), .csv (columns user, items: one comma-joined field), .jsonl "
                       "(one {\"user\", \"items\"} object a line) or .parquet (columns user, items); scores "
                       "too with --with_scores. Any other suffix is refused.")
  top_n: int = option(50, "Items per user.", lower=1)
  with_scores: bool = option(False, "Write item:score instead of item.")
  batch_size: int = option(4096, "Users per faiss search.", lower=1)
  num_shards: int = option(1, "Split the users into this many contiguous shards.", lower=1)
  shard_index: int = option(0, "Which shard this run handles, 0-based.", lower=0)
  num_threads: int | None = option(None, "faiss OpenMP threads; default faiss's.", lower=1)
  save_index: str = option("", "Write the built index here (and PATH.json), for --load_index.")
  load_index: str = option("", "Search an index --save_index wrote over the same items (e.g. one IVF build "
                           "shared by the shards of a catalog) instead of building one.")

  def check(self):
    _require(self.shard_index < self.num_shards,
             f"--shard_index={self.shard_index} must be in [0, --num_shards={self.num_shards})")
    _require(not (self.save_index and self.load_index), "--save_index: choose it or --load_index, not both")


@dataclasses.dataclass(frozen=True)
class ServeConfig(Section):
  """jaxrec.serve: the HTTP server's model, address, batching and request limits."""
  workdir: str = option("", "Trained workdir to serve.")
  checkpoints: str = option("auto", "Which checkpoints: the best on validation, the latest, or auto (best "
                            "where validation ran).", choices=("auto", "latest", "best"))
  host: str = option("127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
  port: int = option(8000, "Port to bind; 0 picks a free one (the ready line says which).", lower=0)
  batching: bool = option(True, "Micro-batch requests that arrive together; off: one request per call.")
  max_wait_ms: float = option(2.0, "How long the first request of a batch waits for others.", lower=0)
  max_batch: int = option(SERVE_BATCH_SIZES[-1], "Most users encoded in one call.", lower=1,
                          upper=SERVE_BATCH_SIZES[-1])
  max_top_n: int = option(1000, "Largest top_n a request may ask for.", lower=1)
  max_body_bytes: int = option(1 << 20, "Largest request body; larger gets 413.", lower=1)
  max_requests: int = option(1024, "Most requests in one list body.", lower=1)
  # Two full batches at the default --max_batch: one encoding while the next forms keeps the
  # encoder busy, and an admitted request waits behind at most that much work (BENCHMARKS, Serving).
  max_queue: int = option(2 * SERVE_BATCH_SIZES[-1], "Most queries (users) waiting for their answers; a "
                          "request that arrives while as many wait gets 503 with Retry-After.", lower=1)
  shed_delay_ms: float = option(200.0, "How long a shed request's 503 waits before it is sent, so that "
                                "clients retrying at once (ignoring Retry-After) cannot turn shedding into a "
                                "storm that takes the server's CPU from the requests it admitted.", lower=0)
  remote_admin: bool = option(False, "Accept POST /admin/reload from other hosts than loopback.")
  watch_s: float = option(0.0, "Every this many seconds, reload if --workdir (or the run its link points "
                          "at) has another newest checkpoint; 0: reload on SIGHUP or POST /admin/reload only.",
                          lower=0)
