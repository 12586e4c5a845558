"""Data loading benchmark: generated click logs as `pairs` text, CSV and Parquet, each read by
`click_log.read_click_log` in its own process (load seconds, peak RSS, bytes per click).

  python -m benchmarks.data_bench --clicks=10000000
  python -m benchmarks.data_bench --clicks=10000000,100000000 --skip=csv@100000000

Logs: Zipf(1.1) item popularity over items = users / 2.5, 20 clicks per user on average,
integer ids, a timestamp column, from a fixed seed. The rows come in time order across users,
as a click log is written, so the reader's (user, time) sort has every user's clicks to gather
from the whole file (a log generated grouped by user would flatter that sort). Files are
written once under --scratch and reused (named `log_CLICKS_bytime.*`, so files of the older,
user-grouped generator are not).
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("clicks", ["10000000"], "Click counts of the generated logs.")
flags.DEFINE_list("formats", ["pairs", "csv", "parquet"], "Formats to time.")
flags.DEFINE_list("skip", [], "format@clicks pairs not to run, e.g. csv@100000000.")
flags.DEFINE_string("scratch", "/tmp/jaxrec_data_bench", "Where the generated logs are kept.")
flags.DEFINE_bool("update_md", True, "Write the table into BENCHMARKS.md.")
flags.DEFINE_string("worker", None, "Internal: read this file in this process and print JSON.")
flags.DEFINE_string("worker_format", None, "Internal: its format.")


def generate(clicks: int):
  """(user, item, time) columns, rows in time order: users and items are drawn independently
  of the times, so sorting the times alone orders the rows as sorting whole rows by time would."""
  rng = np.random.default_rng(0)
  users = max(clicks // 20, 1)
  items = max(int(users / 2.5), 1)
  user = rng.integers(0, users, clicks)  # not sorted: a user's clicks are spread over the log
  item = np.minimum(rng.zipf(1.1, clicks) - 1, items - 1)
  item = rng.permutation(items)[item]  # popular items spread over the id range
  when = rng.integers(1_600_000_000, 1_700_000_000, clicks)
  when.sort()  # the log's order: by time across users
  return user, item, when


def write(path: str, fmt: str, clicks: int) -> None:
  if os.path.exists(path):
    return
  user, item, when = generate(clicks)
  tmp = path + ".tmp"
  if fmt == "parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"user": user, "item": item, "ts": when}), tmp, row_group_size=1 << 20)
  else:
    sep = " " if fmt == "pairs" else ","
    with open(tmp, "w") as f:
      if fmt == "csv":
        f.write("user,item,ts\n")
      for lo in range(0, clicks, 1 << 20):
        block = np.stack([user[lo:lo + (1 << 20)], item[lo:lo + (1 << 20)], when[lo:lo + (1 << 20)]], axis=1)
        np.savetxt(f, block, fmt="%d", delimiter=sep)
  os.replace(tmp, path)


def worker() -> None:
  from jaxrec import click_log
  start = time.perf_counter()
  time_col = "ts" if FLAGS.worker_format in ("csv", "parquet") else ""
  log = click_log.read_click_log(FLAGS.worker, FLAGS.worker_format, time_col=time_col)
  seconds = time.perf_counter() - start
  print(json.dumps({"seconds": seconds, "rss_mib": common.peak_rss_mib(), "clicks": int(len(log.items)),
                    "users": int(log.num_users), "items": int(log.num_items - 1)}))


def main(argv):
  del argv
  if FLAGS.worker:
    return worker()
  os.makedirs(FLAGS.scratch, exist_ok=True)
  baseline = json.loads(subprocess.run([sys.executable, "-c", "import json, resource, numpy, jaxrec.click_log; "
                                        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))"],
                                       capture_output=True, text=True, check=True).stdout)
  rows = []
  for clicks in map(int, FLAGS.clicks):
    for fmt in FLAGS.formats:
      if f"{fmt}@{clicks}" in FLAGS.skip:
        continue
      path = os.path.join(FLAGS.scratch, f"log_{clicks}_bytime.{'txt' if fmt == 'pairs' else fmt}")
      write(path, fmt, clicks)
      out = subprocess.run([sys.executable, "-m", "benchmarks.data_bench", f"--worker={path}",
                            f"--worker_format={fmt}"], capture_output=True, text=True)
      if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
      r = json.loads(out.stdout.strip().splitlines()[-1])
      per_click = (r["rss_mib"] - baseline) * 2**20 / r["clicks"]
      rows.append([f"{clicks:,}", fmt, f"{os.path.getsize(path) / 2**20:,.0f}", f"{r['seconds']:.2f}",
                   f"{r['rss_mib']:,.0f}", f"{per_click:.0f}", f"{r['users']:,}", f"{r['items']:,}"])
      print(rows[-1], file=sys.stderr, flush=True)
  text = "\n".join([
      "## Loading click logs", "", f"`{common.command_line('benchmarks.data_bench')}`",
      f"Machine: {common.machine_line()}. Generated logs (20 clicks a user, Zipf items, items = users / 2.5, "
      "rows in time order across users, seed 0). Each read in its own process; bytes per click are the peak RSS "
      f"above that of a process that only imported jaxrec.click_log ({baseline:.0f} MiB).", "",
      common.markdown_table(["clicks", "format", "file MiB", "load s", "peak RSS MiB", "bytes/click", "users",
                             "items"], rows)])
  print(text)
  if FLAGS.update_md:
    common.update_section("data", text)


if __name__ == "__main__":
  app.run(main)
