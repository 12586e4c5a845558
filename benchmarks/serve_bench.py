"""Serving benchmark: a real async HTTP load generator against `python -m jaxrec.serve` on loopback.

  python -m benchmarks.serve_bench                          # trains a 1-epoch Beauty model first
  python -m benchmarks.serve_bench --workdir=runs/beauty    # or serves a trained workdir

For 1, 8 and 64 concurrent clients, each sending one user's history (drawn from the log)
per request for --seconds, with micro-batching on and off in the same run: requests/s,
latency percentiles, errors and the server's peak RSS; then 64 clients while the server
reloads its model. Client and server share this machine's cores; loopback traffic only,
bounded in count and time.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "", "Trained workdir to serve; empty: train --train_flags into --scratch.")
flags.DEFINE_string("data_path", os.path.join(REPO, "..", "shared", "data", "beauty_s3rec.txt"),
                    "Click log the request histories are drawn from (and trained on).")
flags.DEFINE_string("train_flags", "--flagfile=experiments/beauty_spec.flags --num_epochs=1 --eval_every_epochs=0",
                    "Flags of the model trained when --workdir is empty (its shape is what serving costs).")
flags.DEFINE_string("scratch", "/tmp/jaxrec_serve_bench", "Workdir of the trained model (reused once trained).")
flags.DEFINE_list("clients", ["1", "8", "64"], "Concurrent clients.")
flags.DEFINE_float("seconds", 10.0, "Load per measurement.")
flags.DEFINE_integer("max_requests", 200_000, "Bound on the requests of one measurement.")
flags.DEFINE_integer("top_n", 50, "Items per request.")
flags.DEFINE_bool("update_md", True, "Write the table into BENCHMARKS.md.")
flags.DEFINE_string("load_worker", "", "Internal: run one load-generator process against this URL.")
flags.DEFINE_integer("load_clients", 16, "Internal: its concurrent clients.")
flags.DEFINE_integer("load_seed", 0, "Internal: its seed.")
flags.DEFINE_string("markdown_out", "", "Write the markdown here instead of BENCHMARKS.md.")

READY = re.compile(r"ready on (http://127\.0\.0\.1:\d+)")


def env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start_server(workdir: str, *extra):
  proc = subprocess.Popen([sys.executable, "-m", "jaxrec.serve", f"--workdir={workdir}", "--port=0", *extra],
                          env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  while True:
    line = proc.stderr.readline()
    if not line:
      raise RuntimeError("the server exited before it was ready")
    match = READY.search(line)
    if match:
      return proc, match.group(1)


def peak_rss_mib(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


CLIENTS_PER_PROCESS = 16  # one asyncio httpx loop stalls past a few dozen connections


async def _client_loop(url: str, clients: int, seconds: float, histories: list, seed: int) -> dict:
  import httpx
  latencies, errors, steps = [], 0, set()
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def one(k):
      nonlocal errors
      rng = np.random.default_rng([seed, k])
      while loop.time() < deadline and len(latencies) + errors < FLAGS.max_requests:
        body = {"clicks": histories[rng.integers(len(histories))], "top_n": FLAGS.top_n}
        start = time.perf_counter()
        try:
          response = await client.post("/v1/recall", json=body)
          ok = response.status_code == 200
        except Exception:  # noqa: BLE001 (counted)
          ok = False
        if ok:
          latencies.append(time.perf_counter() - start)
          steps.add(response.json()["model_step"])
        else:
          errors += 1

    await asyncio.gather(*(one(k) for k in range(clients)))
  return {"latencies": latencies, "errors": errors, "steps": sorted(steps)}


def load(url: str, clients: int, seconds: float, during=None) -> dict:
  """`clients` concurrent request loops for `seconds`, CLIENTS_PER_PROCESS to a process."""
  procs = []
  for p in range(0, clients, CLIENTS_PER_PROCESS):
    n = min(CLIENTS_PER_PROCESS, clients - p)
    procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.serve_bench", f"--load_worker={url}",
                                   f"--load_clients={n}", f"--seconds={seconds}", f"--load_seed={p}",
                                   f"--data_path={FLAGS.data_path}", f"--top_n={FLAGS.top_n}"],
                                  env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
  start = time.perf_counter()
  extra = during() if during else None
  parts = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
  elapsed = time.perf_counter() - start
  ms = np.concatenate([np.asarray(part["latencies"]) for part in parts]) * 1000
  return {"rps": len(ms) / seconds, "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95),
          "p99": np.percentile(ms, 99), "errors": sum(part["errors"] for part in parts), "extra": extra,
          "elapsed": elapsed}


def histories_of(path: str) -> list:
  from jaxrec import click_log
  log = click_log.read_click_log(path)
  return [log.item_ids[log.items[log.indptr[u]:log.indptr[u + 1]]].tolist() for u in range(log.num_users)]


def main(argv):
  del argv
  import logging
  logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
  if FLAGS.load_worker:
    result = asyncio.run(_client_loop(FLAGS.load_worker, FLAGS.load_clients, FLAGS.seconds,
                                      histories_of(FLAGS.data_path), FLAGS.load_seed))
    print(json.dumps(result))
    return
  from jaxrec import click_log
  log = click_log.read_click_log(FLAGS.data_path)
  workdir = FLAGS.workdir
  if not workdir:
    workdir = FLAGS.scratch
  if not os.path.exists(os.path.join(workdir, "_SUCCESS")):
    subprocess.run([sys.executable, "-m", "jaxrec.main", *FLAGS.train_flags.split(), f"--data_path={FLAGS.data_path}",
                    f"--workdir={workdir}"], env=env(), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  rows, results = [], {}
  for batching in (True, False):
    proc, url = start_server(workdir, f"--{'' if batching else 'no'}batching")
    try:
      load(url, 8, 2.0)  # warm-up
      for clients in map(int, FLAGS.clients):
        r = load(url, clients, FLAGS.seconds)
        results[(batching, clients)] = r
        rows.append(["on" if batching else "off", clients, f"{r['rps']:,.0f}", f"{r['p50']:.1f}",
                     f"{r['p95']:.1f}", f"{r['p99']:.1f}", r["errors"], f"{peak_rss_mib(proc.pid):,.0f}"])
        print(rows[-1], file=sys.stderr, flush=True)
      if batching:
        def reload():
          import httpx
          time.sleep(FLAGS.seconds / 3)
          return httpx.post(url + "/admin/reload", timeout=300).status_code
        clients = max(map(int, FLAGS.clients))
        r = load(url, clients, FLAGS.seconds, during=reload)
        rows.append([f"on, reload (HTTP {r['extra']})", clients, f"{r['rps']:,.0f}", f"{r['p50']:.1f}",
                     f"{r['p95']:.1f}", f"{r['p99']:.1f}", r["errors"], f"{peak_rss_mib(proc.pid):,.0f}"])
    finally:
      proc.terminate()
      proc.wait(timeout=60)
  most = max(map(int, FLAGS.clients))
  gain = results[(True, most)]["rps"] / results[(False, most)]["rps"]
  p99 = results[(True, most)]["p99"]
  table = common.markdown_table(["batching", "clients", "requests/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                                 "server peak RSS MiB"], rows)
  text = "\n".join([
      "## Serving", "", f"`{common.command_line('benchmarks.serve_bench')}`",
      f"Machine: {common.machine_line()}; the load generator (httpx, async, {CLIENTS_PER_PROCESS} clients a "
      "process) shares its cores with the server.",
      "",
      f"Model: `{workdir}` ({log.num_items - 1:,} items); each request one user's history from "
      f"`{os.path.basename(FLAGS.data_path)}`, top_n={FLAGS.top_n}; {FLAGS.seconds:g} s per row.",
      f"Targets: at {most} clients micro-batching gives at least 4x the throughput of one request per call "
      f"({gain:.1f}x, {'met' if gain >= 4 else '**missed**'}); p99 under 50 ms at {most} clients "
      f"({p99:.1f} ms, {'met' if p99 < 50 else '**missed**'}); 0 errors, none during the reload.", "", table])
  print(text)
  if FLAGS.markdown_out:
    common.update_section("serve", text, FLAGS.markdown_out)
  elif FLAGS.update_md:
    common.update_section("serve", text)


if __name__ == "__main__":
  app.run(main)
