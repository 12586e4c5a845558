"""Serving benchmark: wrk against `python -m jaxrec.serve` on loopback, each on its own core.

  python -m benchmarks.serve_bench                          # trains a 1-epoch Beauty model first (~1 min)
  python -m benchmarks.serve_bench --workdir=runs/beauty    # or serves a trained workdir
  python -m benchmarks.serve_bench --load_generator=python  # without wrk: the httpx client only

About 4 minutes on 2 cores at the defaults (two server start-ups, 10 s a row; the reload row
is 10 s, the reload itself, about 30 s on one busy core, and 10 s more), plus an epoch of
training for the reload's model, and the minute of training when --scratch has no model yet.

The server runs on core 1 (`taskset -c 1`) and wrk on core 0 with one thread
(benchmarks/serve_bench.lua): each request is one user's whole history from the click log, and
the answers are counted by status. For 1, 8, 64 and 256 open connections, with micro-batching
on and off: served requests/s, latency p50/p99/p99.9 over all answers, 503s (shed past the
server's --max_queue), other errors, timeouts (wrk --timeout 10s) and the server's peak RSS;
then 64 connections while the server reloads its model, and the Python httpx client at 64
clients (one connection each) for comparison. The markdown says which targets the numbers
meet. Loopback traffic only, bounded in time.

The reload loads another model, as a daily cycle's would: before the rows, a one-epoch warm
start of the served run (`--init_from`, its training flags read back from its
train_config.json) is trained into a temporary workdir; the server is started on a link to the
served run (a published link is resolved at every load), and the reload row moves the link to
the new run before POST /admin/reload. While the reload runs, from the POST to its answer, a
probe client sends one request after another beside the load and counts its answers that are
not 2xx and its transport errors (timeouts included); the row's own counts cover the load
generator's requests over the whole row.
"""

import asyncio
import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(REPO, "benchmarks", "serve_bench.lua")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "", "Trained workdir to serve; empty: train --train_flags into --scratch.")
flags.DEFINE_string("data_path", os.path.join(REPO, "..", "shared", "data", "beauty_s3rec.txt"),
                    "Click log the request histories are drawn from (and trained on).")
flags.DEFINE_string("train_flags", "--flagfile=experiments/beauty_spec.flags --num_epochs=1 --eval_every_epochs=0",
                    "Flags of the model trained when --workdir is empty (its shape is what serving costs).")
flags.DEFINE_string("scratch", "/tmp/jaxrec_serve_bench", "Workdir of the trained model (reused once trained).")
flags.DEFINE_string("server_flags", "", "More flags of the server, e.g. '--max_queue=256 --max_wait_ms=2'.")
flags.DEFINE_enum("load_generator", "wrk", ["wrk", "python"],
                  "wrk (installed from Debian's package when missing), or the Python httpx client for every row.")
flags.DEFINE_list("connections", ["1", "8", "64", "256"], "Open connections (wrk) or clients (python) of the rows.")
flags.DEFINE_integer("reload_connections", 64, "Connections of the row during which the server reloads: "
                     "--seconds of load, POST /admin/reload, and --seconds more once it has answered.")
flags.DEFINE_list("python_clients", ["64"], "With wrk: rows of the Python httpx client too (batching on); "
                  "empty: none.")
flags.DEFINE_integer("seconds", 10, "Load per row (whole seconds: wrk's -d).")
flags.DEFINE_integer("timeout_s", 10, "A request unanswered this long is a timeout (wrk --timeout, httpx's).")
flags.DEFINE_integer("bodies", 5000, "Request bodies drawn (users with replacement) from the click log.")
flags.DEFINE_integer("top_n", 50, "Items per request.")
flags.DEFINE_bool("pin", True, "Server on core 1, load generator on core 0 (taskset), where there are 2 cores.")
flags.DEFINE_integer("max_requests", 200_000, "Bound on the requests of one Python client row.")
flags.DEFINE_bool("update_md", True, "Write the section into BENCHMARKS.md.")
flags.DEFINE_string("markdown_out", "", "Write the markdown here instead of BENCHMARKS.md.")
flags.DEFINE_string("load_worker", "", "Internal: run one Python load-generator process against this URL.")
flags.DEFINE_string("load_bodies", "", "Internal: its request bodies, one JSON a line.")
flags.DEFINE_integer("load_clients", 16, "Internal: its concurrent clients.")
flags.DEFINE_integer("load_seed", 0, "Internal: its seed.")

READY = re.compile(r"ready on (http://127\.0\.0\.1:\d+)")
TARGET_P99_MS = 50  # at TARGET_CONNECTIONS, batching on
TARGET_GAIN = 4  # micro-batching's requests/s over one request per call, at TARGET_CONNECTIONS
TARGET_CONNECTIONS = 64
OVERLOAD_CONNECTIONS = 256  # served within OVERLOAD_P99_MS at p99 or shed with 503, never a timeout
OVERLOAD_P99_MS = 200
WARMUP_S = 2
OPEN_ENDED_S = 600  # the reload row's load runs until stopped, at most this long


def env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def ensure_wrk() -> str:
  """wrk's version line; Debian's package is installed first when wrk is missing."""
  if not shutil.which("wrk"):
    command = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0 and shutil.which("sudo"):
      command = ["sudo", "-n", *command]
    print(f"serve_bench: wrk is missing; running {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
      subprocess.run(command, check=False)
    except OSError as e:
      print(f"serve_bench: {e}", file=sys.stderr)
    if not shutil.which("wrk"):
      sys.exit("serve_bench: wrk is not installed and `apt-get install -y wrk` failed. Run\n"
               "  sudo apt-get update && sudo apt-get install -y wrk\n"
               "or measure with the Python client alone: --load_generator=python")
  # `wrk -v` prints its version and usage to stdout and exits 1.
  out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
  return out[1] if len(out) > 1 else "(unknown version)"


def training_flags(workdir: str) -> list:
  """The flags `workdir` was trained with, as arguments, from the values its train_config.json
  keeps (a warm start must repeat them); not its warm start's own --init_from or its length."""
  with open(os.path.join(workdir, "train_config.json")) as f:
    kept = json.load(f)
  args = []
  for name, value in sorted(kept.items()):
    if name in ("data_shards", "init_from", "init_checkpoints", "num_epochs") or value is None:
      continue  # data_shards: resolved, not a flag value (the default resolves it again)
    if isinstance(value, bool):
      args.append(f"--{'' if value else 'no'}{name}")
    elif isinstance(value, list):
      args.append(f"--{name}={','.join(map(str, value))}")
    else:
      args.append(f"--{name}={value}")
  return args


def train_reload_target(workdir: str, target: str) -> None:
  """Trains `target`: one epoch warm-started from `workdir` on --data_path, the model the
  reload row loads (a newer run of the same items, other parameters)."""
  command = [sys.executable, "-m", "jaxrec.main", *training_flags(workdir), f"--data_path={FLAGS.data_path}",
             f"--workdir={target}", f"--init_from={workdir}", "--num_epochs=1"]
  proc = subprocess.run(command, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if proc.returncode:
    raise RuntimeError(f"training the reload's model failed ({proc.returncode}): {shlex.join(command)}\n"
                       + proc.stderr[-3000:])


def point(link: str, target: str) -> None:
  """Points the symlink `link` at `target` in one rename, as --publish does."""
  tmp = link + ".tmp"
  if os.path.lexists(tmp):
    os.remove(tmp)
  os.symlink(os.path.abspath(target), tmp)
  os.replace(tmp, link)


def pinning() -> tuple:
  """(server command prefix, load generator command prefix, the sentence the output says)."""
  cores = os.cpu_count() or 1
  if not FLAGS.pin:
    why = "--nopin"
  elif not shutil.which("taskset"):
    why = "no taskset"
  elif not {0, 1} <= os.sched_getaffinity(0):
    why = f"cores 0 and 1 are not both this process's ({cores} cores)"
  else:
    idle = f"; cores 2-{cores - 1} unused" if cores > 2 else ""
    return (["taskset", "-c", "1"], ["taskset", "-c", "0"],
            f"server pinned to core 1 (`taskset -c 1`), load generator to core 0 (`taskset -c 0`){idle}")
  return [], [], f"**unpinned** ({why}): the server and the load generator share the cores"


def start_server(workdir: str, prefix: list, *extra):
  """(process, URL, its ready line, the tail of its log). `prefix` (taskset) execs the server:
  the process id is the server's."""
  proc = subprocess.Popen([*prefix, sys.executable, "-m", "jaxrec.serve", f"--workdir={workdir}", "--port=0", *extra],
                          env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  tail = collections.deque(maxlen=40)
  for line in proc.stderr:
    tail.append(line)
    match = READY.search(line)
    if match:
      break
  else:
    raise RuntimeError("the server exited before it was ready:\n" + "".join(tail))
  # Read on from here: a full pipe would block the server at its next log line.
  threading.Thread(target=tail.extend, args=(proc.stderr,), daemon=True).start()
  return proc, match.group(1), line.strip(), tail


def peak_rss_mib(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def write_bodies(path: str, count: int, top_n: int) -> None:
  """`count` request bodies, one JSON a line: the whole history of a user drawn at random."""
  from jaxrec import click_log
  log = click_log.read_click_log(FLAGS.data_path)
  users = np.random.default_rng(0).integers(log.num_users, size=count)
  with open(path, "w") as f:
    for u in users:
      clicks = log.item_ids[log.items[log.indptr[u]:log.indptr[u + 1]]].tolist()
      f.write(json.dumps({"clicks": clicks, "top_n": top_n}) + "\n")


def wrk_load(url: str, connections: int, seconds: int, bodies: str, prefix: list, during=None) -> dict:
  """One wrk thread holding `connections` open for `seconds` (serve_bench.lua's requests), or
  until `during(stop)` stops it: wrk ends a run on SIGINT as at its deadline, summary and done()
  included."""
  command = [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={FLAGS.timeout_s}s",
             "-s", LUA, url, "--", bodies]
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  extra = during(lambda: proc.send_signal(signal.SIGINT)) if during else None
  out, err = proc.communicate()
  lines = [line for line in out.splitlines() if line.startswith("serve_bench_result ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n{out}\n{err}")
  w = json.loads(lines[-1].partition(" ")[2])
  return {"served_per_s": w["status_200"] / (w["duration_us"] / 1e6), "p50": w["p50_us"] / 1000,
          "p99": w["p99_us"] / 1000, "p999": w["p999_us"] / 1000,
          "served_p99": w["served_p99_bound_us"] / 1000 if w["status_200"] else float("nan"),
          "served_p99_exact": w["status_503"] + w["status_other"] == 0, "shed": w["status_503"],
          "other": w["status_other"] + w["connect"] + w["read"] + w["write"], "timeouts": w["timeout"],
          "extra": extra}


CLIENTS_PER_PROCESS = 16  # one asyncio httpx loop stalls past a few dozen connections


async def _client_loop(url: str, clients: int, seconds: float, bodies: list, seed: int) -> dict:
  import httpx
  answered, served = [], []  # ms, of every HTTP answer and of the 200s
  counts = {"503": 0, "other": 0, "timeouts": 0, "errors": 0}
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(base_url=url, timeout=FLAGS.timeout_s, limits=limits,
                               headers={"Content-Type": "application/json"}) as client:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = [start + seconds]
    loop.add_signal_handler(signal.SIGINT, lambda: deadline.__setitem__(0, 0))  # stop: the requests in flight end

    async def one(k):
      rng = np.random.default_rng([seed, k])
      while loop.time() < deadline[0] and len(answered) + counts["timeouts"] + counts["errors"] < FLAGS.max_requests:
        start = time.perf_counter()
        try:
          response = await client.post("/v1/recall", content=bodies[rng.integers(len(bodies))])
        except httpx.TimeoutException:
          counts["timeouts"] += 1
          continue
        except httpx.HTTPError:
          counts["errors"] += 1
          continue
        answered.append((time.perf_counter() - start) * 1000)
        if response.status_code == 200:
          served.append(answered[-1])
        else:
          counts["503" if response.status_code == 503 else "other"] += 1

    await asyncio.gather(*(one(k) for k in range(clients)))
  return {"answered": answered, "served": served, "seconds": loop.time() - start, **counts}


def python_load(url: str, clients: int, seconds: int, bodies: str, prefix: list, during=None) -> dict:
  """`clients` concurrent request loops for `seconds` or until `during(stop)` stops them,
  CLIENTS_PER_PROCESS to a process."""
  procs = []
  for p in range(0, clients, CLIENTS_PER_PROCESS):
    n = min(CLIENTS_PER_PROCESS, clients - p)
    procs.append(subprocess.Popen([*prefix, sys.executable, "-m", "benchmarks.serve_bench", f"--load_worker={url}",
                                   f"--load_clients={n}", f"--seconds={seconds}", f"--load_seed={p}",
                                   f"--load_bodies={bodies}", f"--timeout_s={FLAGS.timeout_s}",
                                   f"--max_requests={FLAGS.max_requests}"],
                                  env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
  extra = during(lambda: [proc.send_signal(signal.SIGINT) for proc in procs]) if during else None
  parts = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
  answered = np.concatenate([np.asarray(part["answered"]) for part in parts])
  served = np.concatenate([np.asarray(part["served"]) for part in parts])
  def pct(ms, q):
    return float(np.percentile(ms, q)) if len(ms) else float("nan")
  # The processes ran side by side: their rates add up.
  return {"served_per_s": sum(len(part["served"]) / part["seconds"] for part in parts),
          "p50": pct(answered, 50), "p99": pct(answered, 99), "p999": pct(answered, 99.9),
          "served_p99": pct(served, 99), "served_p99_exact": True,
          "shed": sum(part["503"] for part in parts), "other": sum(part["other"] + part["errors"] for part in parts),
          "timeouts": sum(part["timeouts"] for part in parts), "extra": extra}


def reload_during(url: str, seconds: float, link: str, target: str, body: str):
  """A `during` of an open-ended load: after `seconds`, point `link` (the server's --workdir) at
  `target` and POST /admin/reload; stop the load `seconds` after its answer, so the row holds the
  whole reload. Until the reload answers, a probe client sends `body` one request after another
  and counts what the reload window did to requests. Returns {status, took_s, model_step,
  previous_step, new_run, requests, not_2xx, transport}: the reload's HTTP status (or the
  exception's name), the seconds it took, its answer's steps, whether an answer after it names
  `target` as its run, and the probe's requests, those answered other than 2xx, and those that
  got no answer (transport errors, timeouts included)."""
  def during(stop):
    import httpx
    time.sleep(seconds)
    point(link, target)
    reload = {"model_step": None, "previous_step": None}

    def post():
      start = time.perf_counter()
      try:
        response = httpx.post(url + "/admin/reload", timeout=OPEN_ENDED_S)
        reload["status"] = response.status_code
        if response.status_code == 200:
          reload.update(response.json())
      except (httpx.HTTPError, ValueError) as e:
        reload["status"] = type(e).__name__
      reload["took_s"] = time.perf_counter() - start

    poster = threading.Thread(target=post)
    poster.start()
    probe = {"requests": 0, "not_2xx": 0, "transport": 0}
    with httpx.Client(base_url=url, timeout=FLAGS.timeout_s, headers={"Content-Type": "application/json"}) as client:
      while poster.is_alive():
        probe["requests"] += 1
        try:
          if not 200 <= client.post("/v1/recall", content=body).status_code < 300:
            probe["not_2xx"] += 1
        except httpx.HTTPError:
          probe["transport"] += 1
      poster.join()
      try:  # the model now served must be the target's, not the one served before
        reload["new_run"] = client.post("/v1/recall", content=body).json().get("run") == os.path.realpath(target)
      except (httpx.HTTPError, ValueError):
        reload["new_run"] = False
    time.sleep(seconds)
    stop()
    return {**reload, **probe}
  return during


def drain(url: str, body: str) -> None:
  """Returns once the server has answered what the last row left behind: a load generator that
  stops closes its connections, but the queries they sent stay queued. The queue is first in,
  first out, so a 200 to a request sent now comes after all of them."""
  import httpx
  deadline = time.monotonic() + OPEN_ENDED_S
  while time.monotonic() < deadline:
    try:
      response = httpx.post(url + "/v1/recall", content=body, headers={"Content-Type": "application/json"},
                            timeout=FLAGS.timeout_s)
      if response.status_code == 200:
        return
    except httpx.TimeoutException:
      pass
    time.sleep(0.1)  # a 503: the queue is still full
  raise RuntimeError(f"the server at {url} answered no request for {OPEN_ENDED_S} s")


def verdict(met: bool) -> str:
  return "met" if met else "**missed**"


def targets(results: dict, generator: str) -> list:
  """One line per target, each met or **missed** as the measured numbers say."""
  lines = []
  on, off = results.get((generator, True, TARGET_CONNECTIONS)), results.get((generator, False, TARGET_CONNECTIONS))
  if on and off:
    gain = on["served_per_s"] / off["served_per_s"] if off["served_per_s"] else float("inf")
    lines.append(f"micro-batching serves at least {TARGET_GAIN}x the requests/s of one request per call at "
                 f"{TARGET_CONNECTIONS} connections: {gain:.1f}x, {verdict(gain >= TARGET_GAIN)}")
    lines.append(f"p99 under {TARGET_P99_MS} ms at {TARGET_CONNECTIONS} connections, batching on: "
                 f"{on['p99']:.1f} ms, {verdict(on['p99'] < TARGET_P99_MS)}")
  else:
    lines.append(f"micro-batching gain and p99 at {TARGET_CONNECTIONS} connections: not measured "
                 f"(--connections has no {TARGET_CONNECTIONS})")
  r = results["reload"]
  e = r["extra"]
  failed = r["shed"] + r["other"] + r["timeouts"]  # the load generator's, over the whole row
  window = e["not_2xx"] + e["transport"]  # the probe's, from the POST to its answer
  swapped = "its one-epoch warm start" if e["new_run"] else "**not** the warm start: answers after it name another run"
  met = failed == 0 and window == 0 and e["status"] == 200 and e["new_run"]
  lines.append(f"0 errors while the model reloads at {FLAGS.reload_connections} connections: reload HTTP "
               f"{e['status']} after {e['took_s']:.1f} s (model step {e['previous_step']} of the served run -> "
               f"step {e['model_step']} of {swapped}); during the reload {e['requests']:,} probe requests, "
               f"{e['not_2xx']} answered not 2xx, {e['transport']} transport errors; over the whole row "
               f"{failed} answers not 200 or timed out, {verdict(met)}")
  over = results.get((generator, True, OVERLOAD_CONNECTIONS))
  if over:
    bound = "" if over["served_p99_exact"] else "at most "
    met = over["served_p99"] < OVERLOAD_P99_MS and over["timeouts"] == 0 and over["other"] == 0
    lines.append(f"at {OVERLOAD_CONNECTIONS} connections, batching on, each request served within "
                 f"{OVERLOAD_P99_MS} ms at p99 or shed with 503, never a timeout: the 200s' p99 {bound}"
                 f"{over['served_p99']:.1f} ms, {over['shed']:,} shed, {over['timeouts']} timeouts, "
                 f"{over['other']} other errors, {verdict(met)}")
  else:
    lines.append(f"served within {OVERLOAD_P99_MS} ms or shed at {OVERLOAD_CONNECTIONS} connections: not measured "
                 f"(--connections has no {OVERLOAD_CONNECTIONS})")
  return lines


def main(argv):
  del argv
  import logging
  logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
  if FLAGS.load_worker:
    with open(FLAGS.load_bodies) as f:
      bodies = f.read().splitlines()
    result = asyncio.run(_client_loop(FLAGS.load_worker, FLAGS.load_clients, FLAGS.seconds, bodies,
                                      FLAGS.load_seed))
    print(json.dumps(result))
    return
  generator = FLAGS.load_generator
  wrk_version = ensure_wrk() if generator == "wrk" else None
  server_cpu, client_cpu, pinned = pinning()
  loads = {"wrk": wrk_load, "python": python_load}
  workdir = FLAGS.workdir or FLAGS.scratch
  if not os.path.exists(os.path.join(workdir, "_SUCCESS")):
    subprocess.run([sys.executable, "-m", "jaxrec.main", *FLAGS.train_flags.split(), f"--data_path={FLAGS.data_path}",
                    f"--workdir={workdir}"], env=env(), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  temp = tempfile.mkdtemp(prefix="serve_bench_")
  bodies = os.path.join(temp, "bodies.jsonl")
  write_bodies(bodies, FLAGS.bodies, FLAGS.top_n)
  link, reload_target = os.path.join(temp, "current"), os.path.join(temp, "reloaded")
  train_reload_target(workdir, reload_target)
  with open(bodies) as f:
    probe = f.readline().strip()
  server_flags = shlex.split(FLAGS.server_flags)
  rows, results = [], {}

  def measure(kind, label, server, connections, seconds, during=None):
    proc, url, _, tail = server
    r = loads[kind](url, connections, seconds, bodies, client_cpu, during)
    if proc.poll() is not None:
      raise RuntimeError(f"the server exited ({proc.returncode}) during a row:\n" + "".join(tail))
    drain(url, probe)  # before the server's peak RSS and the next row
    rows.append([kind if kind == "wrk" else "httpx (Python)", label, connections, f"{r['served_per_s']:,.0f}",
                 f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['p999']:.1f}", f"{r['shed']:,}", r["other"],
                 r["timeouts"], f"{peak_rss_mib(proc.pid):,.0f}"])
    print(rows[-1], file=sys.stderr, flush=True)
    return r

  for batching in (True, False):
    point(link, workdir)  # every server starts on the served run; the reload row moves the link
    server = start_server(link, server_cpu, f"--{'' if batching else 'no'}batching", *server_flags)
    proc, url, ready, _ = server
    try:
      loads[generator](url, 8, WARMUP_S, bodies, client_cpu)
      drain(url, probe)
      for connections in map(int, FLAGS.connections):
        results[(generator, batching, connections)] = measure(generator, "on" if batching else "off", server,
                                                              connections, FLAGS.seconds)
      if batching:
        r = measure(generator, "on, reload", server, FLAGS.reload_connections, OPEN_ENDED_S,
                    during=reload_during(url, FLAGS.seconds, link, reload_target, probe))
        rows[-1][1] = f"on, reload (HTTP {r['extra']['status']}, {r['extra']['took_s']:.1f} s)"
        results["reload"] = r
        for clients in map(int, FLAGS.python_clients if generator == "wrk" else []):
          results[("python", True, clients)] = measure("python", "on", server, clients, FLAGS.seconds)
    finally:
      proc.terminate()
      proc.wait(timeout=60)
  shutil.rmtree(temp)
  table = common.markdown_table(["client", "batching", "connections", "served/s", "p50 ms", "p99 ms", "p99.9 ms",
                                 "503 (shed)", "other errors", "timeouts", "server peak RSS MiB"], rows)
  model = ready.partition(" (")[2].rstrip(")") or "see the server's ready line"
  trained = "" if FLAGS.workdir else f", trained here with `{FLAGS.train_flags}`"
  client = (f"wrk {wrk_version}, one thread (`-t1`), `--timeout {FLAGS.timeout_s}s`, `benchmarks/serve_bench.lua`"
            if generator == "wrk" else "the Python client alone (--load_generator=python)")
  text = "\n".join([
      "## Serving", "", f"`{common.command_line('benchmarks.serve_bench')}`", "",
      f"Machine: {common.machine_line()}; {pinned}. Load generator: {client}; the httpx rows run "
      f"{CLIENTS_PER_PROCESS} asyncio clients a process, one connection each, on the same core(s).",
      "",
      f"Model: `{workdir}` ({model}){trained}. Server: `python -m jaxrec.serve --workdir=LINK --port=0 "
      f"--batching|--nobatching{' ' + shlex.join(server_flags) if server_flags else ''}`, LINK a symlink to "
      f"`{workdir}`. Each request one user's whole history ({FLAGS.bodies:,} users drawn from "
      f"`{os.path.basename(FLAGS.data_path)}`), top_n={FLAGS.top_n}; {FLAGS.seconds} s per row after a {WARMUP_S} s "
      f"warm-up; the reload row is {FLAGS.seconds} s of load, then LINK moved to another model (one epoch "
      f"warm-started from `{workdir}` with its training flags, trained before the rows) and POST /admin/reload, "
      f"and {FLAGS.seconds} s more after it answered; a probe client sends one request after another from the "
      "POST to its answer and counts its errors there. Latency percentiles are over all answers, 503s included; "
      "served/s counts 200s; other errors are other statuses and socket errors; a timeout is a request unanswered "
      f"after {FLAGS.timeout_s} s.",
      "",
      "Targets, from the numbers below:", "", *[f"- {line}" for line in targets(results, generator)], "", table])
  print(text)
  if FLAGS.markdown_out:
    common.update_section("serve", text, FLAGS.markdown_out)
  elif FLAGS.update_md:
    common.update_section("serve", text)


if __name__ == "__main__":
  app.run(main)
