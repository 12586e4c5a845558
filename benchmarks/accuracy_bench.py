r"""Accuracy of experiment flagfiles: train each (per seed), report validation and test metrics.

  python -m benchmarks.accuracy_bench experiments/beauty.flags experiments/beauty_inbatch.flags \
      benchmarks/experiments/beauty_backward.flags@0 --seeds=0,1,2 [--reuse]

A flagfile followed by @SEEDS (e.g. @0 or @0,1) runs with those seeds instead of --seeds.

Each flagfile runs as `python -m jaxrec.main --flagfile=F --seed=S --workdir=runs/accuracy/NAME_sS`
(the test metrics come from the checkpoint with the best validation NDCG@10). What the
table needs of each run (best validation row, test row, epochs, minutes, validation curve) is
kept in a small committed record, benchmarks/accuracy_runs/NAME_sS.json, because workdirs
(checkpoints, hundreds of MB) are not committed. With --reuse, a finished workdir is read
instead of retrained and, where the workdir is gone, its record. Writes a table per dataset
to BENCHMARKS.md (section "accuracy_runs") and a plot of validation NDCG@10 per epoch.
"""

import glob
import json
import os
import struct
import subprocess
import sys

from absl import app
from absl import flags

from benchmarks import common
from jaxrec import fileio

flags.DEFINE_list("seeds", ["0"], "Seeds to run each flagfile with; tables show the mean.")
flags.DEFINE_bool("reuse", False, "Read workdirs that already hold test metrics, or else the runs' "
                  "records, instead of retraining.")
flags.DEFINE_string("root", "runs/accuracy", "Where the workdirs go.")
flags.DEFINE_string("records", os.path.join(os.path.dirname(os.path.abspath(__file__)), "accuracy_runs"),
                    "Where each run's record (NAME_sS.json, what the table needs of it) is kept "
                    "('' for none).")
flags.DEFINE_float("max_gap_minutes", 10, "Gaps between a run's TensorBoard events longer than this "
                   "(a stop and resume, a pause) are not counted in its minutes.")
flags.DEFINE_string("plot_out", "benchmarks/accuracy_valid_ndcg.png", "PNG plot path ('' for none).")
flags.DEFINE_string("markdown_out", common.BENCHMARKS_MD, "Markdown file to update ('' for none).")
flags.DEFINE_string("title", "Runs of the experiment flagfiles", "Heading of the section written.")
flags.DEFINE_string("section_name", "accuracy_runs", "Name of the BENCHMARKS.md section to write (the "
                    "generated table inside the hand-written \"accuracy\" account).")
FLAGS = flags.FLAGS

KEYS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")


def flag_value(path: str, name: str) -> str:
  """The last `--name=value` in a flagfile (following --flagfile includes), else ''."""
  value = ""
  for line in open(path):
    line = line.strip()
    if line.startswith("--flagfile="):
      value = flag_value(line.split("=", 1)[1], name) or value
    elif line.startswith(f"--{name}="):
      value = line.split("=", 1)[1]
  return value


def run(flagfile: str, seed: int) -> dict:
  name = os.path.splitext(os.path.basename(flagfile))[0]
  workdir = os.path.join(FLAGS.root, f"{name}_s{seed}")
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  record = os.path.join(FLAGS.records, f"{name}_s{seed}.json") if FLAGS.records else ""
  finished = os.path.exists(metrics_path) and _rows(metrics_path, "test")
  if FLAGS.reuse and not finished and record and os.path.exists(record):
    with open(record) as f:
      return json.load(f)
  if not (FLAGS.reuse and finished):
    subprocess.run([sys.executable, "-m", "jaxrec.main", f"--flagfile={flagfile}", f"--seed={seed}",
                    f"--workdir={workdir}"], check=True)
  valid = _rows(metrics_path, "valid")
  best = max(valid, key=lambda r: r["ndcg@10"])
  result = {"name": name, "seed": seed, "valid": best, "test": _rows(metrics_path, "test")[-1],
            "epochs": max(r["epoch"] for r in valid), "minutes": run_minutes(workdir, FLAGS.max_gap_minutes),
            "curve": [[r["epoch"], r["ndcg@10"]] for r in valid],
            "dataset": os.path.basename(flag_value(flagfile, "data_path")) or "synthetic"}
  if record:
    os.makedirs(FLAGS.records, exist_ok=True)
    with fileio.atomic_open(record) as f:  # one line per field: short, readable diffs
      f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in result.items()) + "\n}\n")
  return result


def _rows(path: str, split: str) -> list:
  with open(path) as f:
    return [r for r in map(json.loads, f) if r.get("split") == split and "mode" not in r]


def run_minutes(workdir: str, max_gap_minutes: float) -> float:
  """Wall minutes a run spent, from the times of its TensorBoard events (NaN without any).

  A run writes an event when it starts or resumes, at every log step, every validation and the
  test, so the time between its first and last event is its wall time; gaps longer than
  max_gap_minutes are a stop before a resume or a pause, and are left out.
  """
  times = sorted(_event_times(workdir))
  gaps = [b - a for a, b in zip(times, times[1:])]
  return sum(g for g in gaps if g <= 60 * max_gap_minutes) / 60 if times else float("nan")


def _event_times(workdir: str):
  """wall_time of each event in <workdir>/tensorboard; records are framed as TFRecords
  (u64 length, u32 crc, payload, u32 crc). A record cut short by a killed writer is skipped."""
  from tensorboardX.proto import event_pb2
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    start = 0
    while start + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[start:start + 8])
      if start + 16 + length > len(data):
        break
      yield event_pb2.Event.FromString(data[start + 12:start + 12 + length]).wall_time
      start += 16 + length


def mean(values) -> float:
  values = list(values)
  return sum(values) / len(values)


def _minutes(minutes: float) -> str:
  return "-" if minutes != minutes else f"{minutes:.1f}"  # NaN: no TensorBoard events


def main(argv):
  flagfiles = argv[1:]
  if not flagfiles:
    raise app.UsageError("name one or more experiment flagfiles")
  results = []
  for arg in flagfiles:
    flagfile, _, seeds = arg.partition("@")
    results += [run(flagfile, int(s)) for s in (seeds.split(",") if seeds else FLAGS.seeds)]
  sections = []
  for dataset in dict.fromkeys(r["dataset"] for r in results):
    rows = []
    for name in dict.fromkeys(r["name"] for r in results if r["dataset"] == dataset):
      runs = [r for r in results if r["name"] == name]
      cells = [f"`{name}`", len(runs)]
      cells += [f"{mean(r['valid'][k] for r in runs):.4f}" for k in KEYS]
      cells += [f"{mean(r['test'][k] for r in runs):.4f}" for k in KEYS]
      cells += [f"{mean(r['valid']['epoch'] for r in runs):.0f} / {mean(r['epochs'] for r in runs):.0f}",
                _minutes(mean(r["minutes"] for r in runs)),
                ", ".join(f"{r['test']['ndcg@10']:.4f}" for r in runs)]
      rows.append(cells)
    header = ["flagfile", "seeds"] + [f"valid {k}" for k in KEYS] + [f"test {k}" for k in KEYS] + \
             ["best / last epoch", "minutes", "test ndcg@10 per seed"]
    sections.append(f"**{dataset}**\n\n" + common.markdown_table(header, rows))
  body = "\n\n".join(sections)
  print(body)
  if FLAGS.markdown_out:
    text = (f"### {FLAGS.title}\n\n`{common.command_line('benchmarks.accuracy_bench')}` on {common.machine_line()}. "
            "Test metrics are those of the checkpoint with the best validation NDCG@10; each cell is "
            "the mean over the seeds; minutes are the wall time of a whole run (training with "
            "validation every epoch, then test), read from its TensorBoard event times, with gaps of "
            f"more than {FLAGS.max_gap_minutes:g} minutes (a stop and resume, a pause) left out.\n\n" + body)
    common.update_section(FLAGS.section_name, text, FLAGS.markdown_out)
  if FLAGS.plot_out:
    _plot(results, FLAGS.plot_out)


def _plot(results, path):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
    return
  datasets = list(dict.fromkeys(r["dataset"] for r in results))
  first_seed = {}  # one curve per flagfile: its lowest seed
  for r in results:
    first_seed[r["name"]] = min(r["seed"], first_seed.get(r["name"], r["seed"]))
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    curves = [r for r in results if r["dataset"] == dataset and r["seed"] == first_seed[r["name"]]]
    for i, r in enumerate(curves):  # the 10 default colours repeat: dash the second round
      ax.plot(*zip(*r["curve"]), label=r["name"], linestyle="-" if i < 10 else "--")
    ax.set_title(dataset, fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  app.run(main)
