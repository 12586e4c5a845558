"""Warm start (--init_from): yesterday's model grown to today's catalog.

The vocabulary keeps every old item in its row, in its order, and appends the items new
in today's log; items absent today keep their rows (they stay in the catalog). Encoder
and position parameters are copied; each item table (and with item features each value
table) keeps its old rows and takes its new rows from the cold-start initialisation of the
same seed, so a new row is exactly what a cold start would have given it. The optimizer starts fresh: Adam moments of a grown table
have no meaning for its new rows, and yesterday's moments would carry a step size tuned
to yesterday's last steps rather than to today's warm-up and schedule.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import checkpoints
from jaxrec import vocab
from jaxrec.errors import InputError
from jaxrec.model import ModelConfig

# Model fields that fix parameter shapes or their meaning; named as main's flags.
SHAPE_FIELDS = ("seq_length", "hidden_size", "num_attention_heads", "num_hidden_layers", "feed_forward_size",
                "share_embeddings", "embedding_layer_norm", "position_order", "encoder")
TABLES = ("item_embeddings", "outputs_embedding")


@dataclasses.dataclass(frozen=True)
class Base:
  """The model a warm start begins from."""
  workdir: str
  config: ModelConfig
  params: dict
  item_ids: np.ndarray  # [I_old] raw ids of its table rows, padding first
  step: int


def read_base(workdir: str, which: str = "auto") -> Base:
  """The `which` checkpoint (best, latest, or auto: best where validation ran, else latest) of
  a finished jaxrec run, with its vocabulary."""
  flag = f"--init_from={workdir}"
  if not os.path.isdir(workdir):
    raise InputError(f"{flag}: not a directory")
  config = checkpoints.read_model_config(workdir)
  vocab_path = vocab.path_in(workdir)
  if config is None or not os.path.exists(vocab_path):
    raise InputError(f"{flag}: not a jaxrec workdir (no model_config.json and vocab.npz)")
  if not os.path.exists(os.path.join(workdir, checkpoints.SUCCESS)):
    raise InputError(f"{flag}: its run has not finished (no {checkpoints.SUCCESS}): rerun its command to "
                     "finish it, or start from a finished run")
  which = checkpoints.resolve(workdir, which)
  mgr = checkpoints.manager(workdir, checkpoints.BEST if which == "best" else checkpoints.LATEST, writer=False)
  if not mgr.all_steps():
    raise InputError(f"{flag}: no checkpoint in {mgr.directory} (--init_checkpoints={which})")
  item_ids = vocab.load_item_vocab(vocab_path)
  if len(item_ids) != config.num_items:
    raise InputError(f"{vocab_path}: {len(item_ids) - 1} items, but model_config.json says {config.num_items - 1}")
  step = mgr.latest_step()
  return Base(workdir, config, checkpoints.restore_params(mgr, step), item_ids, step)


def check_same_shape(base: Base, config: ModelConfig) -> None:
  """Refuses model flags whose parameters could not be copied from `base`."""
  for name in SHAPE_FIELDS:
    there, now = getattr(base.config, name), getattr(config, name)
    if there != now:
      raise InputError(f"--{name}={now}: the model of --init_from={base.workdir} has {name}={there}; "
                       "a warm start keeps the model's shape")


def merge_vocab(old_item_ids: np.ndarray, log_item_ids: np.ndarray):
  """(item ids [I], new [I] bool): the old ids in their rows, then the log's new ids."""
  new_ids = np.setdiff1d(log_item_ids[1:], old_item_ids[1:])  # sorted, as a cold start orders them
  item_ids = np.concatenate([old_item_ids, new_ids])  # the wider unicode width of the two
  new = np.zeros(len(item_ids), bool)
  new[len(old_item_ids):] = True
  return item_ids, new


def _grows(name: str) -> bool:
  """Tables whose rows a warm start appends to: the item tables and the feature value tables."""
  return name in TABLES or name.startswith(("feature_", "output_feature_"))


def graft(fresh: dict, base: dict) -> dict:
  """`fresh` parameters (a cold start's, for the grown catalog) with `base` copied in: every
  non-table parameter whole, and the first rows of each item and feature value table.
  Parameters the base lacks (feature tables new to a model that had none) stay fresh."""
  def one(path, fresh_leaf, base_leaf):
    name = path[0].key
    if _grows(name):
      return fresh_leaf.at[:base_leaf.shape[0]].set(base_leaf)
    if fresh_leaf.shape != base_leaf.shape:
      raise ValueError(f"{jax.tree_util.keystr(path)}: shape {base_leaf.shape} in the base model, "
                       f"{fresh_leaf.shape} now")
    return jnp.asarray(base_leaf, fresh_leaf.dtype)
  out = dict(fresh)
  for name in fresh:
    if name in base:
      out[name] = jax.tree.map_with_path(lambda path, f, b: one((jax.tree_util.DictKey(name), *path), f, b),
                                         fresh[name], base[name])
  return out
