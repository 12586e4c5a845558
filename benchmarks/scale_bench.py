"""Scaling: synthetic logs of growing size through every stage of the pipeline.

  python -m benchmarks.scale_bench --users=100000,1000000

Logs: 20 clicks per user on average, Zipf(1.1) item popularity over items = users / 10,
integer ids and a timestamp, from a fixed seed, with the rows in time order across users as
a click log is written (a log generated grouped by user would flatter the loader's (user,
time) sort); written once as Parquet under --scratch (`log_USERS_bytime.parquet`, so logs of
the older, user-grouped generator are not reused). Each stage runs the real command line in
its own process; reported are its wall seconds and its own peak RSS (os.wait4): load
(--mode=inspect), one training epoch (MODEL: the SPEC's hidden size 64, 2 heads, 2 layers
and batch 198, but sequence length 50, not the SPEC's 70; in-batch loss, the default
layout, no validation), evaluation (--mode=eval: full ranking of the validation and the
test users), export, and recall of 50 items per user, exact (flat) and IVF.
"""

import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_list("users", ["100000", "1000000"], "User counts of the generated logs.")
flags.DEFINE_list("stages", ["load", "train", "eval", "export", "recall_flat", "recall_ivf"], "Stages to run.")
flags.DEFINE_string("scratch", "/tmp/jaxrec_scale_bench", "Where logs and workdirs go.")
flags.DEFINE_bool("update_md", True, "Write the table into BENCHMARKS.md.")

MODEL = ["--seq_length=50", "--hidden_size=64", "--num_attention_heads=2", "--num_hidden_layers=2",
         "--batch_size=198", "--num_epochs=1", "--eval_every_epochs=0", "--log_every_steps=1000",
         "--checkpoint_every_steps=100000"]


def write_log(path: str, users: int) -> int:
  """Writes the log once; returns its click count."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  if os.path.exists(path):
    return pq.ParquetFile(path).metadata.num_rows
  rng = np.random.default_rng(0)
  clicks = users * 20
  items = max(users // 10, 1)
  user = rng.integers(0, users, clicks)  # not sorted: a user's clicks are spread over the log
  item = rng.permutation(items)[np.minimum(rng.zipf(1.1, clicks) - 1, items - 1)]
  when = rng.integers(1_600_000_000, 1_700_000_000, clicks)
  # Users and items are drawn independently of the times, so sorting the times alone puts
  # the rows in time order as sorting whole rows by time would.
  when.sort()
  pq.write_table(pa.table({"user": user, "item": item, "ts": when}), path + ".tmp", row_group_size=1 << 20)
  os.replace(path + ".tmp", path)
  return clicks


def timed(args: list) -> tuple:
  """(wall seconds, peak RSS MiB) of one process of `python args`."""
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  err = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{err[-3000:]}")
  return time.perf_counter() - start, usage.ru_maxrss / 1024


def main(argv):
  del argv
  os.makedirs(FLAGS.scratch, exist_ok=True)
  rows = []
  for users in map(int, FLAGS.users):
    path = os.path.join(FLAGS.scratch, f"log_{users}_bytime.parquet")
    clicks = write_log(path, users)
    workdir = os.path.join(FLAGS.scratch, f"run_{users}")
    if "train" in FLAGS.stages:
      shutil.rmtree(workdir, ignore_errors=True)  # a finished run left here would resume, not train
    data = [f"--data_path={path}", "--time_col=ts", f"--workdir={workdir}"]
    npz = os.path.join(workdir, "embeddings.npz")
    commands = {
        "load": ["-m", "jaxrec.main", "--mode=inspect", *data],
        "train": ["-m", "jaxrec.main", *data, *MODEL],
        "eval": ["-m", "jaxrec.main", "--mode=eval", *data],
        "export": ["-m", "jaxrec.main", "--mode=export", *data],
        "recall_flat": ["-m", "jaxrec.recall", f"--embeddings={npz}", f"--output={workdir}/flat.tsv"],
        "recall_ivf": ["-m", "jaxrec.recall", f"--embeddings={npz}", f"--output={workdir}/ivf.tsv", "--index=ivf"],
    }
    for stage in FLAGS.stages:
      seconds, rss = timed(commands[stage])
      rows.append([f"{users:,}", f"{users // 10:,}", f"{clicks:,}", stage, f"{seconds:,.1f}",
                   f"{seconds / clicks * 1e6:.2f}", f"{rss:,.0f}"])
      print(rows[-1], file=sys.stderr, flush=True)
  text = "\n".join([
      "## Scaling with the log", "", f"`{common.command_line('benchmarks.scale_bench')}`",
      f"Machine: {common.machine_line()}. Generated logs (20 clicks a user, Zipf items, items = users / 10, "
      "rows in time order across users, seed 0) as Parquet; each stage is the real CLI in its own process "
      "(seconds include start-up and compiles); train is one epoch of the in-batch loss at hidden 64, 2 heads, "
      "2 layers, batch 198 and sequence length 50 (the SPEC's is 70).", "",
      common.markdown_table(["users", "items", "clicks", "stage", "seconds", "µs per click", "peak RSS MiB"], rows)])
  print(text)
  if FLAGS.update_md:
    common.update_section("scale", text)


if __name__ == "__main__":
  app.run(main)
