"""Full-ranking evaluation of a trained model: user vectors -> target ranks -> HR/NDCG/MRR.

Shape key: R users in one block, L sequence length, D hidden size, I item table rows.
"""

import functools

import jax
import numpy as np

from jaxrec import console
from jaxrec import hosts
from jaxrec import input_pipeline
from jaxrec import metrics
from jaxrec.clicks import ClickLog
from jaxrec.holdout import Split
from jaxrec.model import ModelConfig, Seq2Seq


def local_copy(params):
  """A single-device copy of replicated parameters (works with several processes too)."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, params)


@functools.lru_cache(maxsize=8)
def _user_vectors_fn(config: ModelConfig):
  model = Seq2Seq(config)
  return jax.jit(lambda params, ids_RxL: model.apply({"params": params}, ids_RxL,
                                                     method=Seq2Seq.user_vectors))


def user_vectors(params, config: ModelConfig, log: ClickLog, users: np.ndarray, ends: np.ndarray,
                 batch_size: int = 1024) -> np.ndarray:
  """[U, D] float32: the encoder output at the last click before `ends` of each user.

  Users run in blocks of similar history length (input_pipeline.inference_blocks), each
  at the shortest padded length that holds it: exact, since outputs at real positions
  do not depend on padding.
  """
  params = local_copy(params)
  fn = _user_vectors_fn(config)
  out = np.zeros((len(users), config.hidden_size), np.float32)
  for rows, length in input_pipeline.inference_blocks(ends - log.indptr[users], config.seq_length,
                                                      batch_size):
    ids_RxL = input_pipeline.inference_inputs(log, ends[rows], users[rows], length)
    ids_RxL = np.pad(ids_RxL, ((0, batch_size - len(rows)), (0, 0)))
    out[rows] = np.asarray(fn(params, ids_RxL))[:len(rows)]
  return out


def item_table(params, config: ModelConfig) -> np.ndarray:
  """[I, D] float32: the output item table (row 0 is padding)."""
  table = Seq2Seq(config).apply({"params": local_copy(params)}, method=Seq2Seq.output_table)
  return np.asarray(table, np.float32)


def evaluate(params, config: ModelConfig, split: Split, which: str, ks=(10, 20, 50),
             batch_size: int = 1024) -> dict:
  """Metrics of `which` (valid or test) over users with >= 3 clicks, history excluded.

  Every item but padding is ranked except the clicks before the target; a target the
  user had already clicked counts as a miss, as it would in recall.
  """
  log = split.log
  users, ends, targets = split.eval_inputs(which)
  user_emb = user_vectors(params, config, log, users, ends, batch_size)
  history = metrics.padded_histories(*input_pipeline.clicks_before(log, users, ends))
  ranks = metrics.evaluate_ranks(user_emb, item_table(params, config), targets, history)
  # Recall removes everything a user clicked, so a target clicked before can never be
  # recalled: a miss at every K and in MRR (rank -1 here, infinite below), and offline HR@K
  # equals the hit rate of real recall. (It was rank num_items: 1 / (num_items + 1) of MRR.)
  ranks = np.where((history == targets[:, None]).any(axis=1), -1, ranks)
  if split.user_index is not None:  # one process's users: every process's ranks, in the whole log's order
    _, ranks = hosts.gather_rows(split.user_index[users], ranks.astype(np.int32))
  result = metrics.ranking_metrics(np.where(ranks < 0, np.inf, ranks), ks)
  if split.sample and (which == "valid" or split.sample[2]):  # a row says when it ranked a sample
    result["sampled_from"] = split.sample[1]
  return result


def print_table(row: dict) -> None:
  """A small aligned table of one evaluation row, on stdout (first process only)."""
  if not console.is_main_process():
    return
  keys = [k for k in row if k.startswith(("hr@", "ndcg@")) or k == "mrr"]
  head = f"{row['split']:>5} epoch {row.get('epoch', '-')}"
  print(head + "  " + "  ".join(f"{k:>8}" for k in keys))
  print(" " * len(head) + "  " + "  ".join(f"{row[k]:8.4f}" for k in keys), flush=True)
