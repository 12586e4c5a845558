"""Two-day retraining benchmark: a cold start on day 2 against a warm start from day 1's model.

  python -m benchmarks.retrain_bench --seeds=0,1        # beauty_s3rec with experiments/beauty_spec.flags (hours)
  python -m benchmarks.retrain_bench --quick            # a small synthetic rehearsal (a minute)

Day 1 is the log without each user's last click and without every click on a fixed random
10% of the items; day 2 is the full log. Day 1 trains once with the flagfile (the first seed);
on day 2 the same flags train from scratch and with --init_from the day-1 model, per seed. Reported per seed: the
validation NDCG@10 of every epoch (and a plot), the epochs each needs to come within 2% of
the cold start's best validation NDCG@10, test NDCG@10 / HR@10 of the checkpoints selected
on validation, and HR@10 over the users whose test item is one of the new items.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("data_path", os.path.join(REPO, "..", "shared", "data", "beauty_s3rec.txt"), "Full log (day 2).")
flags.DEFINE_string("flagfile_path", "experiments/beauty_spec.flags", "Training flags of every run.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds: day 1 trains once with the first; each trains a cold and a warm day 2.")
flags.DEFINE_string("warm_variant", "", "Extra flags of one more warm start per seed of --variant_seeds, "
                    "e.g. --warmup_steps=1000 (a row of its own).")
flags.DEFINE_list("variant_seeds", ["0"], "Seeds that also run --warm_variant.")
flags.DEFINE_string("scratch", "/tmp/jaxrec_retrain_bench", "Where the logs and workdirs go.")
flags.DEFINE_bool("quick", False, "A small synthetic rehearsal instead of Beauty.")
flags.DEFINE_bool("update_md", True, "Write the table into BENCHMARKS.md.")
flags.DEFINE_string("markdown_out", "", "Write the markdown here instead of BENCHMARKS.md.")

QUICK = ["--hidden_size=16", "--num_hidden_layers=1", "--seq_length=10", "--batch_size=64", "--num_epochs=4"]


def write_days(root: str):
  """(day-1 path, day-2 path, new item ids) of the two logs, written as `user item ...` lines."""
  from jaxrec import click_log
  from jaxrec import holdout
  log = (click_log.synthetic_click_log(2000, 300, seed=0) if FLAGS.quick
         else click_log.read_click_log(FLAGS.data_path))
  rng = np.random.default_rng(1234)
  held = rng.choice(np.arange(1, log.num_items), size=(log.num_items - 1) // 10, replace=False)
  days = []
  for day in (1, 2):
    path = os.path.join(root, f"day{day}.txt")
    with open(path, "w") as f:
      for u in range(log.num_users):
        items = log.items[log.indptr[u]:log.indptr[u + 1]]
        if day == 1:
          items = items[:-1]
          items = items[~np.isin(items, held)]
        if len(items):
          f.write(" ".join([log.user_ids[u], *log.item_ids[items]]) + "\n")
    days.append(path)
  return days[0], days[1], set(log.item_ids[held].tolist())


def train(workdir: str, data: str, seed: int, *extra):
  base = QUICK if FLAGS.quick else [f"--flagfile={FLAGS.flagfile_path}"]
  command = [sys.executable, "-m", "jaxrec.main", *base, f"--data_path={data}", f"--workdir={workdir}",
             f"--seed={seed}", *extra]
  if not os.path.exists(os.path.join(workdir, "_SUCCESS")):
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def valid_curve(workdir: str) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["ndcg@10"] for r in sorted((r for r in rows if r["split"] == "valid" and not r.get("repeated")),
                                       key=lambda r: r["epoch"])]


def new_item_hr(workdir: str, data: str, new_items: set) -> tuple:
  """(HR@10, users) over the users whose test item is new, with the validation-selected checkpoint."""
  from jaxrec import checkpoints, click_log, evaluate, holdout, vocab
  config, mgr, step = checkpoints.select(workdir, "best")
  log, _ = vocab.align_to_vocab(click_log.read_click_log(data), vocab.load_item_vocab(f"{workdir}/vocab.npz"))
  split = holdout.leave_one_out(log)
  users, ends, targets = split.eval_inputs("test")
  keep = np.isin(log.item_ids[targets], list(new_items))
  subset = holdout.Split(log, split.train_end, split.valid_users, split.valid_ends, users[keep], ends[keep])
  metrics = evaluate.evaluate(checkpoints.restore_params(mgr, step), config, subset, "test", (10,))
  return metrics["hr@10"], int(keep.sum())


def _targets(seeds, runs) -> list:
  """The issue's three targets, met or not, from the per-seed runs (cold and warm)."""
  cold = [runs[s, "cold"] for s in seeds]
  warm = [runs[s, "warm"] for s in seeds]
  mean = lambda rs, k: float(np.mean([r[k] for r in rs]))
  spread = max(r["test"] for r in cold) - min(r["test"] for r in cold)
  lines = ["Targets, warm start against cold start:"]
  for s, c, w in zip(seeds, cold, warm):
    ok = w["to98"] is not None and w["to98"] <= c["best"] / 4
    lines.append(f"- seed {s}: within 2% of the cold start's best validation NDCG@10 after {w['to98'] or 'never'} "
                 f"epochs, against a quarter of the cold start's {c['best']} epochs to its best "
                 f"({c['best'] / 4:.1f}): {'met' if ok else 'not met'}.")
  lines.append(f"- test NDCG@10, mean over seeds: warm {mean(warm, 'test'):.4f}, cold {mean(cold, 'test'):.4f}; "
               f"the cold start's seed-to-seed spread {spread:.4f}: "
               f"{'met' if mean(warm, 'test') >= mean(cold, 'test') - spread else 'not met'}.")
  lines.append(f"- HR@10 on new-item targets, mean: warm {mean(warm, 'hr_new'):.4f}, cold {mean(cold, 'hr_new'):.4f} "
               f"(at least half: {'met' if mean(warm, 'hr_new') >= 0.5 * mean(cold, 'hr_new') else 'not met'}).")
  return lines


def before_training(day1_workdir: str, warm_workdir: str, data: str) -> float:
  """Validation NDCG@10 on day 2 of the day-1 model grown to day 2's catalog, before any step."""
  import jax
  from jaxrec import checkpoints, click_log, evaluate, holdout, vocab, warm_start
  from jaxrec.model import init_params
  config = checkpoints.read_model_config(warm_workdir)
  base = warm_start.read_base(day1_workdir, "best")
  params = warm_start.graft(init_params(config, jax.random.key(0)), base.params)
  log, _ = vocab.align_to_vocab(click_log.read_click_log(data), vocab.load_item_vocab(f"{warm_workdir}/vocab.npz"))
  return evaluate.evaluate(params, config, holdout.leave_one_out(log), "valid", (10,))["ndcg@10"]


def epochs_to(curve: list, target: float):
  return next((e + 1 for e, v in enumerate(curve) if v >= target), None)


def main(argv):
  del argv
  root = FLAGS.scratch + ("_quick" if FLAGS.quick else "")
  os.makedirs(root, exist_ok=True)
  day1, day2, new_items = write_days(root)
  rows, curves, runs_by = [], {}, {}
  seeds = [int(s) for s in FLAGS.seeds]
  # One day-1 model serves every seed, as one production model would: the seeds measure the
  # spread of day 2's training, which is what the warm start's target is compared with.
  d1 = os.path.join(root, f"day1_s{seeds[0]}")
  train(d1, day1, seeds[0])
  for seed in seeds:
    cold, warm = (os.path.join(root, f"{name}_s{seed}") for name in ("cold", "warm"))
    train(cold, day2, seed)
    train(warm, day2, seed, f"--init_from={d1}")
    c, w = valid_curve(cold), valid_curve(warm)
    curves[seed] = (c, w)
    target = 0.98 * max(c)
    runs = [("cold", cold, c), ("warm", warm, w)]
    if FLAGS.warm_variant and str(seed) in FLAGS.variant_seeds:
      variant = os.path.join(root, f"warm_variant_s{seed}")
      train(variant, day2, seed, f"--init_from={d1}", *FLAGS.warm_variant.split())
      runs.append((f"warm {FLAGS.warm_variant}", variant, valid_curve(variant)))
    for name, workdir, curve in runs:
      test = json.load(open(os.path.join(workdir, "summary.json")))["test"]
      hr_new, n_new = new_item_hr(workdir, day2, new_items)
      runs_by[seed, name] = dict(best=epochs_to(curve, max(curve)), to98=epochs_to(curve, target),
                                 test=test["ndcg@10"], hr_new=hr_new)
      rows.append([seed, name, f"{max(curve):.4f}", epochs_to(curve, max(c)) if name == "cold" else "-",
                   epochs_to(curve, target) or "never", f"{test['ndcg@10']:.4f}", f"{test['hr@10']:.4f}",
                   f"{hr_new:.4f} ({n_new})"])
      print(rows[-1], file=sys.stderr, flush=True)
  plot = os.path.join(REPO, "benchmarks", "retrain.png") if not FLAGS.quick else os.path.join(root, "retrain.png")
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for seed, (c, w) in curves.items():
      plt.plot(range(1, len(c) + 1), c, "--", label=f"cold, seed {seed}")
      plt.plot(range(1, len(w) + 1), w, label=f"warm, seed {seed}")
    plt.xlabel("epoch on day 2")
    plt.ylabel("validation NDCG@10")
    plt.legend()
    plt.savefig(plot, dpi=100)
  except ImportError:
    plot = None
  targets = _targets(seeds, runs_by)
  start = before_training(d1, os.path.join(root, f"warm_s{seeds[0]}"), day2)
  targets.append(f"- Before any step on day 2, the day-1 model (new items at their initial rows) scores "
                 f"validation NDCG@10 {start:.4f} there; after the warm start's first epoch "
                 f"{curves[seeds[0]][1][0]:.4f}.")
  text = "\n".join([
      "## Daily retraining (two simulated days)", "", f"`{common.command_line('benchmarks.retrain_bench')}`",
      f"Machine: {common.machine_line()}. Day 1: the log without each user's last click and without every "
      f"click on a fixed random 10% of the items ({len(new_items):,} items held out, new on day 2); day 2: the full log.",
      "", common.markdown_table(["seed", "day 2", "best valid NDCG@10", "epochs to its best",
                                 "epochs to 98% of cold's best", "test NDCG@10", "test HR@10",
                                 "HR@10, new-item targets (users)"], rows),
      "", *targets,
      "" if plot is None else f"\n![validation NDCG@10 per epoch]({os.path.relpath(plot, REPO)})"])
  print(text)
  if FLAGS.markdown_out:
    common.update_section("retrain", text, FLAGS.markdown_out)
  elif FLAGS.update_md and not FLAGS.quick:
    common.update_section("retrain", text)


if __name__ == "__main__":
  app.run(main)
