r"""Cold start: recall of items no click has trained, by their features alone.

  python -m benchmarks.cold_bench            # Beauty and its attributes, about 2 trainings

A fixed random share of the items (--holdout_share, seed --seed) is held out entirely: every
click on them is removed from the log the models train on (--data_path minus those clicks, each
user's order kept). Two models train on it with the real command line, each in its own
process: the features recipe (--features_flagfile, with --item_features, where the held-out
items join the catalog as cold items) and the id-only recipe (--ids_flagfile). Then every user
of the full log is ranked as the test protocol ranks them: the target is the user's last click,
the history the clicks before it (the held-out ones among them too, which the features model
knows as cold items and the id-only model skips), every catalog item but the history a
candidate. Targets that are held-out items are the cold targets; the others the warm ones.

Rows: the features model; the id-only model (its catalog lacks the held-out items: every cold
target is a miss); the attribute-popularity baseline (an item scores the summed training clicks
of the items sharing each of its feature values, the same for every user, ties ranked last); and
random ranking (expected HR@K = K / candidates, per user, averaged). Targets (issue 43): cold
HR@50 at least 2x the attribute-popularity baseline and 10x random; warm targets no worse than
the id-only model.
"""

import os
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

from benchmarks import common
from jaxrec import checkpoints
from jaxrec import click_log
from jaxrec import evaluate
from jaxrec import input_pipeline
from jaxrec import item_features
from jaxrec import metrics
from jaxrec import vocab
from jaxrec.config import FeaturesConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("data_path", "../shared/data/beauty_s3rec.txt", "Click log (one user a line).")
flags.DEFINE_string("item_features", "../shared/data/beauty_s3rec_item_attributes.txt", "Item feature table.")
flags.DEFINE_string("features_flagfile", "experiments/beauty_features.flags", "The features recipe.")
flags.DEFINE_string("ids_flagfile", "experiments/beauty.flags", "The id-only recipe.")
flags.DEFINE_list("extra_flags", [], "Flags appended to both trainings (e.g. a tiny model in tests).")
flags.DEFINE_float("holdout_share", 0.1, "Share of the items held out of training entirely.")
flags.DEFINE_integer("seed", 0, "Seed of the held-out items.")
flags.DEFINE_string("scratch", "runs/cold_bench", "Where the reduced log and the workdirs go; a finished "
                    "workdir there is reused.")
flags.DEFINE_string("markdown_out", common.BENCHMARKS_MD, "Markdown file to update ('' for none).")
FLAGS = flags.FLAGS
KS = (10, 50)


def held_out_items(log, share: float, seed: int) -> np.ndarray:
  """[I] bool: the items whose every click is removed from training (row 0, padding, never)."""
  rng = np.random.default_rng(seed)
  rows = rng.choice(np.arange(1, log.num_items), size=int(round(share * (log.num_items - 1))), replace=False)
  held = np.zeros(log.num_items, bool)
  held[rows] = True
  return held


def write_reduced(log, held: np.ndarray, path: str) -> int:
  """The log without the held-out items' clicks, one user a line; returns the clicks kept."""
  kept = 0
  with open(path + ".tmp", "w") as f:
    for u in range(log.num_users):
      items = log.items[log.indptr[u]:log.indptr[u + 1]]
      items = items[~held[items]]
      if len(items):
        f.write(" ".join([log.user_ids[u], *log.item_ids[items]]) + "\n")
        kept += len(items)
  os.replace(path + ".tmp", path)
  return kept


def train(flagfile: str, workdir: str, data_path: str, *extra) -> float:
  """Trains (or finds trained) `workdir`; the minutes it took (0 if reused)."""
  if os.path.exists(os.path.join(workdir, "_SUCCESS")):
    return 0.0
  start = time.time()
  subprocess.run([sys.executable, "-m", "jaxrec.main", f"--flagfile={flagfile}", f"--data_path={data_path}",
                  f"--workdir={workdir}", *extra, *FLAGS.extra_flags], check=True, cwd=REPO)
  return (time.time() - start) / 60


def test_inputs(log):
  """(history log: each user's clicks but the last, target raw ids [U]) of the full log."""
  ends = log.indptr[1:] - 1
  history = click_log.ClickLog(log.user_ids, log.item_ids, np.concatenate([[0], np.cumsum(ends - log.indptr[:-1])]),
                               np.concatenate([log.items[s:e] for s, e in zip(log.indptr[:-1], ends)]))
  return history, log.item_ids[log.items[ends]]


def ranks_of(user_emb, item_emb, item_ids_model, rows, targets_raw) -> np.ndarray:
  """[U] 0-based rank of each target of `rows` (a history log in the model's rows), its history
  excluded; inf where the model lacks the target or the user clicked it before."""
  row_of = {item: r for r, item in enumerate(item_ids_model.tolist())}
  target_rows = np.array([row_of.get(t, 0) for t in targets_raw.tolist()])
  hist = metrics.padded_histories(rows.indptr, rows.items)
  ranks = metrics.evaluate_ranks(user_emb, item_emb, np.maximum(target_rows, 1), hist).astype(np.float64)
  ranks[target_rows == 0] = np.inf
  ranks[(hist == target_rows[:, None]).any(axis=1)] = np.inf
  return ranks


def model_ranks(workdir: str, history, targets_raw) -> np.ndarray:
  """[U] ranks of the trained model in `workdir`; a user none of whose history clicks the model
  knows (every one on a held-out item, for the id-only model) has no vector: a miss."""
  model, mgr, step = checkpoints.select(workdir, "auto")
  params = checkpoints.restore_params(mgr, step)
  item_ids = vocab.load_item_vocab(vocab.path_in(workdir))
  rows, _ = vocab.align_to_vocab(history, item_ids)
  kept = np.isin(history.user_ids, rows.user_ids)
  user_emb = evaluate.user_vectors(params, model, rows, np.arange(rows.num_users), rows.indptr[1:])
  ranks = np.full(history.num_users, np.inf)
  ranks[kept] = ranks_of(user_emb, evaluate.item_table(params, model), item_ids, rows, targets_raw[kept])
  return ranks


def attribute_popularity_ranks(log, held, table, history, targets_raw) -> np.ndarray:
  """Ranks by the summed training clicks of the items sharing each of an item's values."""
  rows = item_features.rows(table, log.item_ids, np.ones(log.num_items, bool))
  clicks = np.bincount(log.items[~held[log.items]], minlength=log.num_items).astype(np.float64)
  score = np.zeros(log.num_items)
  for values in rows.values:
    value_clicks = np.zeros(values.max() + 1)
    np.add.at(value_clicks, values.ravel(), np.repeat(clicks, values.shape[1]))
    value_clicks[0] = 0
    score += value_clicks[values].sum(axis=1)
  emb = score[:, None].astype(np.float32)
  return ranks_of(np.ones((history.num_users, 1), np.float32), emb, log.item_ids, history, targets_raw)


def summarize(ranks: np.ndarray, cold: np.ndarray) -> list:
  out = []
  for mask in (cold, ~cold):
    m = metrics.ranking_metrics(np.where(np.isinf(ranks[mask]), 1e12, ranks[mask]), KS)
    out += [m["hr@10"], m["hr@50"], m["ndcg@10"]]
  return out


def main(argv):
  del argv
  os.makedirs(FLAGS.scratch, exist_ok=True)
  log = click_log.read_click_log(FLAGS.data_path)
  table = item_features.read(FeaturesConfig(item_features=FLAGS.item_features))
  held = held_out_items(log, FLAGS.holdout_share, FLAGS.seed)
  reduced = os.path.join(FLAGS.scratch, f"clicks_without_{held.sum()}_items_seed{FLAGS.seed}.txt")
  kept = write_reduced(log, held, reduced)
  history, targets_raw = test_inputs(log)
  held_ids = set(log.item_ids[held].tolist())
  cold = np.array([t in held_ids for t in targets_raw.tolist()])
  print(f"{held.sum()} of {log.num_items - 1} items held out ({len(log.items) - kept} clicks); "
        f"{cold.sum()} of {log.num_users} test targets are held-out items", file=sys.stderr, flush=True)
  feat_dir, ids_dir = os.path.join(FLAGS.scratch, "features"), os.path.join(FLAGS.scratch, "ids")
  minutes = {"features": train(FLAGS.features_flagfile, feat_dir, reduced, f"--item_features={FLAGS.item_features}"),
             "ids": train(FLAGS.ids_flagfile, ids_dir, reduced)}
  results = {"features model": model_ranks(feat_dir, history, targets_raw),
             "id-only model": model_ranks(ids_dir, history, targets_raw),
             "attribute popularity": attribute_popularity_ranks(log, held, table, history, targets_raw)}
  rows = [[name, *[f"{v:.4f}" for v in summarize(r, cold)]] for name, r in results.items()]
  candidates = (log.num_items - 1) - np.array([len(np.unique(history.items[history.indptr[u]:history.indptr[u + 1]]))
                                               for u in range(history.num_users)])
  random = [float(np.mean(np.minimum(k / candidates[mask], 1))) for mask in (cold, ~cold) for k in KS]
  rows.append(["random (expected)", f"{random[0]:.4f}", f"{random[1]:.4f}", "-", f"{random[2]:.4f}",
               f"{random[3]:.4f}", "-"])
  feat, ids, pop = (summarize(results[k], cold) for k in results)
  checks = [
      f"cold HR@50 >= 2x attribute popularity: {feat[1]:.4f} against {pop[1]:.4f} "
      f"({feat[1] / max(pop[1], 1e-12):.1f}x), {'met' if feat[1] >= 2 * pop[1] else 'not met'}",
      f"cold HR@50 >= 10x random: {feat[1]:.4f} against {random[1]:.4f} ({feat[1] / random[1]:.1f}x), "
      f"{'met' if feat[1] >= 10 * random[1] else 'not met'}",
      f"warm targets no worse than the id-only model: NDCG@10 {feat[5]:.4f} against {ids[5]:.4f}, HR@10 "
      f"{feat[3]:.4f} against {ids[3]:.4f}, {'met' if feat[5] >= ids[5] and feat[3] >= ids[3] else 'not met'}"]
  trained = ", ".join(f"{k} {v:.0f} min" for k, v in minutes.items() if v) or "both reused from --scratch"
  text = "\n".join([
      "## Cold start (item features)", "", f"`{common.command_line('benchmarks.cold_bench')}`", "",
      f"Machine: {common.machine_line()}. {held.sum()} of {log.num_items - 1} items "
      f"({FLAGS.holdout_share:.0%}, seed {FLAGS.seed}) held out of `{os.path.basename(FLAGS.data_path)}`'s training "
      f"entirely ({len(log.items) - kept:,} clicks); {cold.sum():,} of {log.num_users:,} users' last clicks are on "
      f"them (cold targets), {(~cold).sum():,} are not (warm). Models: `{FLAGS.features_flagfile}` and "
      f"`{FLAGS.ids_flagfile}` on the reduced log{' with ' + ' '.join(FLAGS.extra_flags) if FLAGS.extra_flags else ''}"
      f" ({trained}); full ranking of every catalog item but the user's history.", "",
      common.markdown_table(["ranking", "cold HR@10", "cold HR@50", "cold NDCG@10", "warm HR@10", "warm HR@50",
                             "warm NDCG@10"], rows), "",
      "Targets:", "", *[f"- {c}" for c in checks]])
  print(text)
  if FLAGS.markdown_out:
    common.update_section("cold", text, FLAGS.markdown_out)


if __name__ == "__main__":
  app.run(main)
