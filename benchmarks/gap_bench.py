"""Why test NDCG@10 falls further below validation than in BSARec's runs: one trained
workdir's checkpoints evaluated under the variants that could explain it.

  python -m benchmarks.gap_bench --workdir=runs/beauty --data_path=../shared/data/beauty_s3rec.txt

Rows: our protocol (history excluded, a repeated target is a miss); BSARec's (the
S3-Rec trainer's full-sort scoring: excluded items' scores set to 0, not removed, and
the top 20 by argpartition); inputs cut to BSARec's 50 clicks; the latest checkpoint
(`--patience` evaluations after the best), which shows whether test still rises after
validation peaked. Then the selection bias of the early-stopping pick: the best
validation NDCG@10 against the mean of the epochs around it.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A trained workdir (best/ and latest/ checkpoints).")
flags.DEFINE_string("data_path", None, "Its click log.")
flags.DEFINE_integer("around", 3, "Epochs each side of the best for the plateau mean.")


def bsarec_ndcg10(user_emb, item_emb, targets, history):
  """NDCG@10 / HR@10 as the S3-Rec-family trainers compute them: scores of the history set
  to 0 (not -inf), padding row 0 too, top 20 by argpartition then sorted."""
  ndcg, hits = [], []
  for lo in range(0, len(user_emb), 2048):
    scores = user_emb[lo:lo + 2048] @ item_emb.T
    rows = np.arange(len(scores))[:, None]
    scores[rows, history[lo:lo + 2048]] = 0.0
    scores[:, 0] = 0.0
    top = np.argpartition(scores, -20, axis=1)[:, -20:]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)[:, :10]
    match = top == targets[lo:lo + 2048, None]
    rank = np.where(match.any(1), match.argmax(1), 10)
    hits.append(rank < 10)
    ndcg.append(np.where(rank < 10, 1 / np.log2(rank + 2.0), 0.0))
  return float(np.mean(np.concatenate(ndcg))), float(np.mean(np.concatenate(hits)))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  from jaxrec import checkpoints, click_log, evaluate, holdout, input_pipeline, metrics, vocab
  log, _ = vocab.align_to_vocab(click_log.read_click_log(FLAGS.data_path),
                                vocab.load_item_vocab(os.path.join(FLAGS.workdir, "vocab.npz")))
  split = holdout.leave_one_out(log)
  rows = []
  for which in ("best", "latest"):
    config, mgr, step = checkpoints.select(FLAGS.workdir, which)
    params = checkpoints.restore_params(mgr, step)
    items = evaluate.item_table(params, config)
    for part in ("valid", "test"):
      ours = evaluate.evaluate(params, config, split, part, (10,))
      rows.append((which, step, part, "ours", ours["ndcg@10"], ours["hr@10"]))
      if which != "best":
        continue
      users, ends, targets = split.eval_inputs(part)
      history = metrics.padded_histories(*input_pipeline.clicks_before(log, users, ends))
      user_emb = evaluate.user_vectors(params, config, log, users, ends)
      rows.append((which, step, part, "BSARec's scoring", *bsarec_ndcg10(user_emb, items, targets, history)))
      starts = np.maximum(ends - 50, log.indptr[users])
      ids = input_pipeline.left_padded(log.items, starts, ends, config.seq_length)
      fn = evaluate._user_vectors_fn(config)
      short = np.concatenate([np.asarray(fn(evaluate.local_copy(params), ids[lo:lo + 1024]))
                              for lo in range(0, len(ids), 1024)])
      ranks = metrics.evaluate_ranks(short, items, targets, history)
      ranks = np.where((history == targets[:, None]).any(axis=1), log.num_items, ranks)
      m = metrics.ranking_metrics(ranks, (10,))
      rows.append((which, step, part, "inputs cut to 50 clicks", m["ndcg@10"], m["hr@10"]))
  print("| checkpoint | step | split | protocol | NDCG@10 | HR@10 |\n|---|---|---|---|---|---|")
  for which, step, part, protocol, ndcg, hr in rows:
    print(f"| {which} | {step} | {part} | {protocol} | {ndcg:.4f} | {hr:.4f} |")
  with open(os.path.join(FLAGS.workdir, "metrics.jsonl")) as f:
    valid = {r["epoch"]: r["ndcg@10"] for r in map(json.loads, f) if r["split"] == "valid" and "epoch" in r}
  best = max(valid, key=valid.get)
  near = [valid[e] for e in range(best - FLAGS.around, best + FLAGS.around + 1) if e in valid and e != best]
  print(f"\nbest validation NDCG@10 {valid[best]:.4f} at epoch {best}; mean of the {len(near)} epochs within "
        f"{FLAGS.around} of it {np.mean(near):.4f} (the pick's optimism: {valid[best] - np.mean(near):.4f}); "
        f"epoch-to-epoch sd of the differences {np.std(np.diff([valid[e] for e in sorted(valid)])):.4f}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "data_path"])
  app.run(main)
