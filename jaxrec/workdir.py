"""A run's workdir: its files and the decisions made from them, in one place.

  <workdir>/model_config.json   the model's shape (checkpoints.py reads and checks it)
  <workdir>/train_config.json   the values a resumed run must keep (config.Config.kept)
  <workdir>/vocab.npz           raw item ids of the table rows, training click counts
  <workdir>/features.npz        with --item_features: each row's feature values (item_features.py)
  <workdir>/checkpoints/, best/ Orbax checkpoints (checkpoints.py; saves.py watches them)
  <workdir>/metrics.jsonl, events  (run_log.py); summary.json, then _SUCCESS (train.py)

Training decides here whether a run is new, resumed or warm-started, and writes the run's
configuration only after every check has passed; eval, export, export_model and serve read
a log through the workdir's vocabulary (`model_log`), so row r always means the same item.
"""

import contextlib
import dataclasses
import os
import shutil

import flax
import jax
import numpy as np

import jaxrec
from jaxrec import checkpoints
from jaxrec import console
from jaxrec import errors
from jaxrec import item_features
from jaxrec import vocab
from jaxrec import warm_start
from jaxrec.clicks import ClickLog
from jaxrec.config import Config, ModelConfig
from jaxrec.errors import InputError

# Settings the user vectors depend on besides the model: a later eval or export of the same
# workdir must read the log the same way (config.DataConfig; kept in train_config.json).
READ_SETTINGS = ("user_col", "item_col", "time_col", "nulls")
SPLIT_SETTINGS = ("holdout", "split", "valid_from", "test_from")  # which clicks eval measures


def item_ids(workdir: str, model: ModelConfig) -> np.ndarray:
  """The raw ids of the model's table rows (padding first), checked against the model."""
  path = vocab.path_in(workdir)
  if not os.path.exists(path):
    raise InputError(f"--workdir={workdir}: no {vocab.FILENAME}, so the item rows have no ids")
  ids = vocab.load_item_vocab(path)
  if len(ids) != model.num_items:
    raise InputError(f"{path}: {len(ids) - 1} items, but model_config.json says {model.num_items - 1}")
  return ids


@dataclasses.dataclass(frozen=True)
class Start:
  """How a training run begins: the config with the catalog's size, the log in the model's
  rows, and for a warm start the base model and which rows are new."""
  config: Config
  log: ClickLog
  resuming: bool
  base: warm_start.Base | None = None
  new_items: np.ndarray | None = None
  features_note: str = ""  # what matching --item_features to the log did, said once checks pass


def start_training(cfg: Config, log: ClickLog, features: item_features.FeatureTable | None = None) -> Start:
  """Decides new / resume / warm start for cfg.run.workdir and checks everything that can be
  checked before a file is written: a refused run leaves the workdir as it was. With
  `features` (--item_features), the table's items the log lacks join a new run's vocabulary
  as cold items, and the model config carries every row's features."""
  workdir, source = cfg.run.workdir, cfg.data.source
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir={workdir}: not a directory")
  resuming = os.path.exists(vocab.path_in(workdir)) and checkpoints.read_model_config(workdir) is not None
  if resuming:
    # Resuming: the log must hold exactly the model's items, read in its rows' order.
    log, alignment = vocab.align_to_vocab(log, vocab.load_item_vocab(vocab.path_in(workdir)))
    missing = alignment.missing_items
    if features is not None:  # cold items (the feature table's, never clicked) are expected
      clicked = np.bincount(log.items, minlength=log.num_items) > 0
      missing = int(np.sum(~clicked[1:] & ~np.isin(log.item_ids[1:], features.item_ids)))
    # A warm-started workdir keeps yesterday's vanished items: missing from the log is expected.
    if alignment.unknown_items or (missing and not cfg.train.init_from):
      raise InputError(f"{source}: its items differ from those of the model in --workdir={workdir} "
                       f"({alignment.unknown_items} new, {missing} missing): train on it in a "
                       f"new --workdir with --init_from={workdir}")
  base = new_items = None
  # The base model initialises a warm-started run until its first checkpoint exists.
  if cfg.train.init_from and not (resuming and checkpoints.manager(workdir, writer=False).all_steps()):
    if os.path.abspath(cfg.train.init_from) == os.path.abspath(workdir):
      raise InputError(f"--init_from={cfg.train.init_from}: is --workdir; a warm start trains in a new workdir")
    base = warm_start.read_base(cfg.train.init_from, cfg.train.init_checkpoints)
    if base.config.item_features is not None and features is None:
      raise InputError(f"--init_from={cfg.train.init_from}: its model has item features "
                       f"({', '.join(base.config.item_features.fields)}); a warm start keeps them: pass --item_features")
    warm_start.check_same_shape(base, dataclasses.replace(cfg.model, num_items=base.config.num_items))
    if not resuming:
      ids, new_items = warm_start.merge_vocab(base.item_ids, log.item_ids)
      log, _ = vocab.align_to_vocab(log, ids)
    console.info("warm start from %s step %d: %d items kept, %d new", cfg.train.init_from, base.step,
                 len(base.item_ids) - 1, log.num_items - len(base.item_ids))
  base_rows = base.config.item_features if base is not None else None
  note, model = "", {"num_items": log.num_items}
  if features is not None:
    saved_path = item_features.path_in(workdir)
    if resuming and os.path.exists(saved_path):  # the workdir's rows are the truth; the table must agree
      saved = item_features.load(saved_path)
      if item_features.rows(features, log.item_ids, saved.warm, saved).fingerprint() != saved.fingerprint():
        raise InputError(f"--item_features={features.path}: other features than the run in --workdir={workdir} "
                         "trained with; train on it in a new --workdir")
      rows = saved
    else:
      clicked_items = log.item_ids
      log, cold = item_features.with_cold_items(log, features)
      note = item_features.describe(features, clicked_items, cold)
      warm = np.bincount(log.items, minlength=log.num_items) > 0
      if base is not None:  # the base's trained id vectors stay in use, clicked today or not
        warm[:len(base.item_ids)] |= base_rows.warm if base_rows is not None else True
      rows = item_features.rows(features, log.item_ids, warm, base_rows)
    model = {"num_items": log.num_items, "feature_sizes": rows.sizes, "item_features": rows}
  cfg = cfg.replace(model=model)
  checkpoints.check_same_model(workdir, cfg.model)
  checkpoints.check_train_flags(workdir, cfg.kept(), set(cfg.run.allow_changed_flags))
  return Start(cfg, log, resuming, base, new_items, note)


def record(start: Start, item_counts: np.ndarray) -> dict:
  """Creates the workdir and writes the run's configuration (and a new run's vocabulary);
  returns the run's record for summary.json."""
  workdir = start.config.run.workdir
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise InputError(f"--workdir={workdir}: cannot create: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise InputError(f"--workdir={workdir}: not a writable directory")
  with errors.writing(f"the run's configuration under {workdir}", "rerun once the cause is cleared"):
    checkpoints.write_model_config(workdir, start.config.model)
    checkpoints.write_train_flags(workdir, start.config.kept())
    if not start.resuming:
      vocab.save_vocab(start.log, vocab.path_in(workdir), start.new_items, item_counts)
      if start.config.model.item_features is not None:
        item_features.save(start.config.model.item_features, item_features.path_in(workdir))
  return {"flags": start.config.kept(), "data": data_fingerprint(start.config, start.log),
          "versions": versions(), "vocab_fingerprint": vocab.vocab_fingerprint(start.log.item_ids)}


@contextlib.contextmanager
def removed_unless_checkpointed(workdir: str):
  """A workdir this run creates is removed again if the run fails before its first checkpoint,
  so a failed first try leaves nothing that a rerun would take for a run to resume."""
  existed = os.path.exists(workdir)
  try:
    yield
  except BaseException:
    if not existed and os.path.isdir(workdir) and not checkpoints.manager(workdir, writer=False).all_steps():
      shutil.rmtree(workdir, ignore_errors=True)
    raise


def check_publishable(cfg: Config) -> None:
  """--publish: refused before any work if the link could not be repointed afterwards."""
  link = cfg.run.publish
  if not link:
    return
  if os.path.lexists(link) and not os.path.islink(link):
    raise InputError(f"--publish={link}: exists and is not a symlink; name a new path or a link")
  parent = os.path.dirname(os.path.abspath(link))
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise InputError(f"--publish={link}: directory {parent} is not writable")
  if os.path.abspath(link) == os.path.abspath(cfg.run.workdir):
    raise InputError(f"--publish={link}: is --workdir; name the link that should point at it")


def publish(cfg: Config) -> None:
  """Points the --publish symlink at the workdir in one rename: readers see the old run or the new."""
  link = cfg.run.publish
  if not link or jax.process_index() != 0:
    return
  tmp = f"{link}.tmp-{os.getpid()}"
  with errors.writing(f"--publish={link}", "the link points where it did"):
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    os.symlink(os.path.abspath(cfg.run.workdir), tmp)
    os.replace(tmp, link)
  console.info("published %s -> %s", link, os.path.abspath(cfg.run.workdir))


def data_fingerprint(cfg: Config, log: ClickLog) -> dict:
  path = cfg.data.data_path if cfg.data.data_format != "synthetic" else ""
  return {"path": os.path.abspath(path) if path else "synthetic", "format": cfg.data.data_format,
          "bytes": _size(path) if path else None, **{name: getattr(cfg.data, name) for name in READ_SETTINGS},
          "clicks": int(len(log.items)), "users": int(log.num_users), "items": int(log.num_items - 1)}


def _size(path: str) -> int:
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
  return os.path.getsize(path)


def versions() -> dict:
  return {"jaxrec": jaxrec.__version__, "jax": jax.__version__, "flax": flax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def check_read_settings(cfg: Config, names: tuple = READ_SETTINGS) -> None:
  """Eval and export read the log as training did: the same id and time columns (and, for
  eval, the same held-out clicks)."""
  checkpoints.check_train_flags(cfg.run.workdir, {name: getattr(cfg.data, name) for name in names},
                                set(cfg.run.allow_changed_flags))


def check_evaluable(cfg: Config) -> None:
  """Evaluation measures held-out clicks: the ones the run held out, never clicks it trained on."""
  if checkpoints.read_train_flags(cfg.run.workdir).get("holdout") == "none":
    raise InputError(f"--mode=eval: the model in --workdir={cfg.run.workdir} trained on every click "
                     "(--holdout=none), so no click is held out to evaluate it on; evaluate the run with "
                     "--holdout=last that chose its settings")
  check_read_settings(cfg, READ_SETTINGS + SPLIT_SETTINGS)


def select(cfg: Config):
  """(model config, reading manager, step) that --checkpoints and --checkpoint_step name."""
  return checkpoints.select(cfg.run.workdir, cfg.eval.checkpoints, cfg.eval.checkpoint_step)


def model_log(cfg: Config, log: ClickLog, model: ModelConfig) -> ClickLog:
  """The log through the workdir's vocabulary: clicks on items the model lacks are skipped."""
  aligned, alignment = vocab.align_to_vocab(log, item_ids(cfg.run.workdir, model))
  if not len(aligned.items):
    raise InputError(f"{cfg.data.source}: none of its {log.num_items - 1} items is an item of the model in "
                     f"--workdir={cfg.run.workdir} (renamed ids?)")
  if alignment.unknown_clicks:
    console.info("%s: skipped %d clicks on %d items the model does not know (%d users left with none)",
                 cfg.data.source, alignment.unknown_clicks, alignment.unknown_items, alignment.dropped_users)
  return aligned
