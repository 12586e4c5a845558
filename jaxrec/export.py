"""Export user and item vectors with raw ids to one .npz (SPEC section 6), for `jaxrec.recall`."""

import dataclasses

import numpy as np

from jaxrec import evaluate
from jaxrec import hosts
from jaxrec import input_pipeline
from jaxrec.clicks import ClickLog
from jaxrec.fileio import atomic_path
from jaxrec.model import ModelConfig


def history_ends(log: ClickLog, until: str) -> np.ndarray:
  """[U] exclusive end of the clicks each user vector is computed from.

  until="none": the whole history (production); "test": the clicks before the test
  item of users with >= 3 clicks (users with fewer keep all: they have no test item).
  """
  ends = log.indptr[1:].copy()
  if until == "test":
    ends -= log.lengths() >= 3
  elif until != "none":
    raise ValueError(f"export_until must be none or test, not {until!r}")
  return ends


def export_embeddings(params, config: ModelConfig, log: ClickLog, path: str, until: str = "none",
                      batch_size: int = 1024, metadata: dict | None = None, user_index=None,
                      user_ids=None) -> dict:
  """Writes `path` atomically; returns the arrays written.

  A multi-process run: `log` holds this process's users, `user_index` their indices among
  `user_ids` (the whole log's); every process's vectors are gathered and the first process
  writes them all, in the whole log's order (the others write nothing and return {}).

  `metadata` (e.g. the checkpoint step, the model config as JSON, the vocabulary's
  fingerprint) is stored as 0-d arrays beside the vectors; `jaxrec.recall` ignores it.

  user_ids [U], user_emb [U, D], item_ids [I-1], item_emb [I-1, D] (padding dropped),
  visited_indptr [U+1], visited_indices (CSR of the clicks behind each user vector,
  as indices into item_ids); with item features, cold_items [I-1] bool: the items whose
  vector is their features alone (none of their clicks trained the model).
  """
  ends = history_ends(log, until)
  users = np.arange(log.num_users)
  indptr, visited = input_pipeline.clicks_before(log, users, ends)
  user_emb = evaluate.user_vectors(params, config, log, users, ends, batch_size)
  if user_index is not None:
    import jax
    _, user_emb = hosts.gather_rows(user_index, user_emb)
    indptr, visited = hosts.gather_csr(user_index, indptr, visited)
    if jax.process_index() != 0:
      return {}
    log = dataclasses.replace(log, user_ids=user_ids)
  arrays = {
      "user_ids": log.user_ids.astype(str),
      "user_emb": user_emb,
      "item_ids": log.item_ids[1:].astype(str),
      "item_emb": evaluate.item_table(params, config)[1:],
      "visited_indptr": indptr,
      "visited_indices": (visited - 1).astype(np.int64),
      **{k: np.asarray(v) for k, v in (metadata or {}).items()},
  }
  if config.item_features is not None:  # items scored by their features alone (never clicked)
    arrays["cold_items"] = ~config.item_features.warm[1:]
  with atomic_path(path, suffix=".npz") as tmp:
    np.savez(tmp, **arrays)
  return arrays
