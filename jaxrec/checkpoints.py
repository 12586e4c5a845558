"""Orbax checkpoints of the train state, and the workdir's record of the model shape."""

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

from jaxrec import item_features
from jaxrec.errors import InputError
from jaxrec.fileio import atomic_open
from jaxrec.model import ModelConfig

LATEST = "checkpoints"  # every --checkpoint_every_steps and at the end: for resuming
BEST = "best"  # the state with the best validation NDCG@10 so far
SUCCESS = "_SUCCESS"  # written last by a finished run, once summary.json is complete (train.py)


def manager(workdir: str, which: str = LATEST, every: int = 1, max_to_keep: int = 3, writer: bool = True):
  """A CheckpointManager for `workdir/which`; saves only at steps divisible by `every`.

  A writer creates the directory and deletes saves left unfinished by a killed run; a
  reader (eval, export) does neither, so it never removes the save a running trainer has in flight.
  """
  options = ocp.CheckpointManagerOptions(save_interval_steps=max(every, 1), max_to_keep=max_to_keep,
                                         cleanup_tmp_directories=writer, create=writer)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, which)), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def restore(mgr, step: int, abstract_state):
  """Restores `step` into the shapes/shardings of `abstract_state` (from jax.eval_shape)."""
  return mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save(mgr, step: int, state, force: bool = False) -> None:
  if step not in mgr.all_steps():
    mgr.save(step, args=ocp.args.StandardSave(state), force=force)


def abstract_like(state_shapes, sharding):
  """ShapeDtypeStructs carrying `sharding`, what StandardRestore needs to place arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state_shapes)


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "model_config.json")


def write_model_config(workdir: str, config: ModelConfig) -> None:
  with atomic_open(config_path(workdir)) as f:
    json.dump(config.as_dict(), f, indent=1, sort_keys=True)


def read_model_config(workdir: str) -> ModelConfig | None:
  """The workdir's model, with its item features (features.npz) attached where it has them."""
  path = config_path(workdir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      fields = json.load(f)
    fields["feature_sizes"] = tuple(fields.get("feature_sizes", ()))
    config = ModelConfig(**fields)
  except (ValueError, TypeError, AttributeError) as e:
    raise InputError(f"{path}: not a jaxrec model config ({e})") from None
  if config.feature_sizes:
    config = dataclasses.replace(config, item_features=item_features.load(item_features.path_in(workdir)))
  return config


def check_same_model(workdir: str, config: ModelConfig) -> None:
  """Refuses to resume checkpoints of a model of another shape."""
  saved = read_model_config(workdir)
  if saved is None:
    return
  diffs = [f"{k} {v} there, {getattr(config, k)} now" for k, v in saved.as_dict().items()
           if v != getattr(config, k) and k in _SHAPE_FIELDS]
  if diffs:
    raise InputError(f"--workdir={workdir} holds checkpoints of a different model ({'; '.join(diffs)}): "
                     "use a new --workdir or the flags it was trained with")


_SHAPE_FIELDS = ("num_items", "seq_length", "hidden_size", "num_attention_heads", "num_hidden_layers",
                 "feed_forward_size", "share_embeddings", "position_order", "embedding_layer_norm",
                 "encoder", "feature_sizes")


def restore_params(mgr, step: int):
  """The parameters of checkpoint `step` on this process's first device, whatever optimizer
  and device topology (e.g. several processes) wrote them."""
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                        mgr.item_metadata(step))
  return mgr.restore(step, args=ocp.args.StandardRestore(target))["params"]


def train_flags_path(workdir: str) -> str:
  return os.path.join(workdir, "train_config.json")


def read_train_flags(workdir: str) -> dict:
  """The values the run in `workdir` keeps (train_config.json); {} before its first start."""
  path = train_flags_path(workdir)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise InputError(f"{path}: not a jaxrec training config ({e})") from None


def check_train_flags(workdir: str, values: dict, allowed=()) -> None:
  """Refuses to resume a run whose training flags differ from those it was started with,
  except the flags named in `allowed`."""
  saved = read_train_flags(workdir)
  changed = [k for k, v in values.items() if k in saved and saved[k] != v and k not in allowed]
  if changed:
    diffs = "; ".join(f"--{k} {_flag_text(saved[k])} there, {_flag_text(values[k])} now" for k in changed)
    raise InputError(f"--workdir={workdir} was trained with other flags ({diffs}): rerun with its flags, "
                     f"use a new --workdir, or pass --allow_changed_flags={','.join(changed)}")


def write_train_flags(workdir: str, values: dict) -> None:
  with atomic_open(train_flags_path(workdir)) as f:
    json.dump(values, f, indent=1, sort_keys=True)


def _flag_text(value) -> str:
  return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def resolve(workdir: str, which: str) -> str:
  """`which` of best, latest, or auto: the best where validation ran, else the latest."""
  if which == "auto":
    return "best" if manager(workdir, BEST, writer=False).all_steps() else "latest"
  return which


def select(workdir: str, which: str = "auto", step: int | None = None):
  """(model config, reading manager, step) of a trained workdir's checkpoint: `which` is best,
  latest, or auto (best where validation ran, else latest); `step` defaults to the newest."""
  config = read_model_config(workdir)
  if config is None:
    raise InputError(f"--workdir={workdir}: no trained model here (no model_config.json)")
  which = resolve(workdir, which)
  mgr = manager(workdir, BEST if which == "best" else LATEST, writer=False)
  if not mgr.all_steps():
    raise InputError(f"--workdir={workdir}: no checkpoints in {mgr.directory} yet")
  step = mgr.latest_step() if step is None else step
  if step not in mgr.all_steps():
    raise InputError(f"--checkpoint_step={step}: no such checkpoint in {mgr.directory} "
                     f"(have {sorted(mgr.all_steps())})")
  return config, mgr, step
