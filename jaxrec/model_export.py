"""A portable model artifact: the user tower as a serialized `jax.export` module (and, with the
`onnx` extra, as ONNX), with the item vectors and the vocabulary.

The directory it writes:
  user_tower.jax     jax.export.serialize of ids int32 [B, L] -> user vectors float32 [B, D],
                     B symbolic; the parameters are constants inside it.
  user_tower.onnx    the same function as ONNX (input "ids", output "user_vectors"; B dynamic).
  items.npz          item_ids [I] (raw), item_emb [I, D], item_counts [I] (training clicks).
  model.json         step, model config, vocabulary fingerprint, and how to build the input.
A process that loads it needs jax (or onnxruntime) and numpy, not jaxrec:
  exported = jax.export.deserialize(open("user_tower.jax", "rb").read())
  user_BxD = exported.call(ids_BxL)
Input: each user's last L clicks as item rows + 1 (the row of items.npz, plus one),
left-padded with 0. The output at the last position is the user vector, exactly as
export computes it; recall is the inner product with item_emb.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import checkpoints
from jaxrec import evaluate
from jaxrec import vocab
from jaxrec.fileio import atomic_open, atomic_path
from jaxrec.model import ModelConfig, Seq2Seq


def user_tower(params, config: ModelConfig):
  """ids [B, L] int32 -> user vectors [B, D] float32, the parameters closed over."""
  model = Seq2Seq(config)
  return lambda ids_BxL: model.apply({"params": params}, ids_BxL, method=Seq2Seq.user_vectors)


def export_user_tower(params, config: ModelConfig) -> bytes:
  (batch,) = jax.export.symbolic_shape("B")
  spec = jax.ShapeDtypeStruct((batch, config.seq_length), jnp.int32)
  return jax.export.export(jax.jit(user_tower(params, config)))(spec).serialize()


def onnx_user_tower(params, config: ModelConfig):
  """The user tower as an ONNX ModelProto (needs the `onnx` extra: jax2onnx)."""
  from jax2onnx import to_onnx
  (batch,) = jax.export.symbolic_shape("B")
  spec = jax.ShapeDtypeStruct((batch, config.seq_length), jnp.int32)
  return to_onnx(user_tower(params, config), inputs=[spec], model_name="jaxrec_user_tower",
                 input_names=["ids"], output_names=["user_vectors"])


def write_artifact(directory: str, params, config: ModelConfig, item_ids: np.ndarray, item_emb: np.ndarray,
                   item_counts: np.ndarray | None, metadata: dict, onnx: bool) -> list:
  """Writes the files listed above (each atomically); returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  tower = os.path.join(directory, "user_tower.jax")
  with atomic_path(tower) as tmp:
    with open(tmp, "wb") as f:
      f.write(export_user_tower(params, config))
  paths.append(tower)
  if onnx:
    model = onnx_user_tower(params, config)
    path = os.path.join(directory, "user_tower.onnx")
    with atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    paths.append(path)
  items = os.path.join(directory, "items.npz")
  counts = np.zeros(len(item_ids), np.int64) if item_counts is None else item_counts
  with atomic_path(items, suffix=".npz") as tmp:
    np.savez(tmp, item_ids=item_ids, item_emb=item_emb, item_counts=counts)
  paths.append(items)
  manifest = os.path.join(directory, "model.json")
  with atomic_open(manifest) as f:
    json.dump({**metadata, "model_config": config.as_dict(),
               "input": "int32 [B, seq_length]: each user's last seq_length clicks as items.npz row + 1, "
                        "left-padded with 0",
               "output": "float32 [B, hidden_size]: user vectors; score = user_vector . item_emb[row]"},
              f, indent=1)
  paths.append(manifest)
  return paths


def export_workdir(workdir: str, config: ModelConfig, mgr, step: int, directory: str, onnx: bool) -> list:
  """write_artifact for checkpoint `step` of `mgr` in a trained workdir, with its vocabulary."""
  vocab_path = vocab.path_in(workdir)
  item_ids, counts = vocab.load_item_vocab(vocab_path), vocab.load_item_counts(vocab_path)
  params = evaluate.local_copy(checkpoints.restore_params(mgr, step))
  metadata = {"step": step, "vocab_fingerprint": vocab.vocab_fingerprint(item_ids)}
  return write_artifact(directory, params, config, item_ids[1:], evaluate.item_table(params, config)[1:],
                        None if counts is None else counts[1:], metadata, onnx)
