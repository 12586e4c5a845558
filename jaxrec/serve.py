r"""Serve recall for fresh click sequences over HTTP: micro-batched, hot-reloaded.

  python -m jaxrec.serve --workdir=runs/beauty --port=8000
  curl -s localhost:8000/v1/recall -d '{"clicks": ["B0001", "B0042"], "top_n": 10}'

At start-up the model of --workdir (--checkpoints, as for export) is restored, its item
vectors indexed (--index as in jaxrec.recall) and the user tower compiled for every
batch size of BATCH_SIZES and padded length, so no request waits for a compilation.
Requests that arrive together are encoded in one call and searched in one faiss call
(--max_wait_ms, --max_batch); the encoder runs on a worker thread, off the event loop.
A client's mistake, on any route, gets a 4xx whose body is one line of JSON, {"error": ...};
while --max_queue queries wait for answers, a request gets 503 with Retry-After, sent after
--shed_delay_ms so that clients retrying at once cannot storm the server.
POST /admin/reload (loopback only), SIGHUP, or with --watch_s a poll that sees another newest
checkpoint loads it beside the old model and swaps it in at once: a batch in flight finishes
on the model it started with. A --workdir that is a published link is resolved at each load.
SIGTERM stops accepting, answers what is in flight and exits 0.

A served list is what export + jaxrec.recall give for a user with that history (the
same encoder and the same search; the recall contract's tie rule applies).
"""

import os

# The event loop shares the cores with faiss's OpenMP threads, which would otherwise spin
# between searches: libgomp reads this when faiss first loads it, so it is set before the imports.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import asyncio  # noqa: E402 (after the OpenMP setting above)
import concurrent.futures  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pydantic  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.requests import ClientDisconnect  # noqa: E402
import uvicorn  # noqa: E402

from jaxrec import checkpoints  # noqa: E402
from jaxrec import config as config_lib  # noqa: E402
from jaxrec import config_flags  # noqa: E402
from jaxrec import console  # noqa: E402
from jaxrec import errors  # noqa: E402
from jaxrec import evaluate  # noqa: E402
from jaxrec import input_pipeline  # noqa: E402
from jaxrec import recall  # noqa: E402
from jaxrec import vocab  # noqa: E402
from jaxrec import workdir as workdir_lib  # noqa: E402
from jaxrec.errors import InputError  # noqa: E402
from jaxrec.model import Seq2Seq  # noqa: E402

PROG = "jaxrec.serve"
BATCH_SIZES = config_lib.SERVE_BATCH_SIZES
MAX_DEPTH = 32  # most nested lists and objects in a body; a list of requests needs 3
MAX_ERROR_CHARS = 300  # an error message may quote the client's keys and values: cut to this
RETRY_AFTER_S = 1  # a 503's Retry-After: a full queue drains in a few encoder calls, milliseconds

FLAGS = flags.FLAGS


class Overloaded(Exception):
  """--max_queue queries wait already: the request is answered 503 instead of waiting behind them."""


@dataclasses.dataclass(frozen=True)
class Query:
  """One parsed request: known clicks as item rows (0-based into the item vectors)."""
  rows: tuple
  top_n: int
  exclude_clicked: bool
  unknown_clicks: int


def newest_checkpoint(workdir: str, which: str):
  """(run, checkpoint directory, checkpoints.select's triple) that a load of `workdir` takes now.
  A published link (--publish) is resolved at every load, so a reload follows it to the new run."""
  run = os.path.realpath(workdir)
  selected = checkpoints.select(run, which)
  return run, os.path.join(selected[1].directory, str(selected[2])), selected


class ServedModel:
  """One loaded model: parameters, compiled user tower, item index, vocabulary."""

  def __init__(self, workdir: str, which: str, index_config: config_lib.IndexConfig):
    self.run, self.checkpoint, (self.config, mgr, self.step) = newest_checkpoint(workdir, which)
    item_ids = workdir_lib.item_ids(self.run, self.config)  # checked against the model
    self.item_ids = item_ids[1:]  # row r of the index is item r + 1 of the tables
    self.row_of = {item: row for row, item in enumerate(self.item_ids.tolist())}
    counts = vocab.load_item_counts(vocab.path_in(self.run))
    counts = np.zeros(len(item_ids)) if counts is None else counts
    self.popular = np.argsort(-counts[1:], kind="stable")  # most clicked first, ties by row
    self.popular_counts = counts[1:][self.popular].astype(float)
    params = evaluate.local_copy(checkpoints.restore_params(mgr, self.step))
    self.item_emb = evaluate.item_table(params, self.config)[1:]
    self.index = recall.build_index(self.item_emb, index_config)
    self.exact_index = None if index_config.kind == "flat" else functools.cache(
        lambda: recall.build_index(self.item_emb, recall.IndexConfig()))
    self.lengths = input_pipeline.padded_lengths(self.config.seq_length)
    model = Seq2Seq(self.config)
    fn = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=Seq2Seq.user_vectors))
    self.params = params
    self.encoders = {(b, l): fn.lower(params, jax.ShapeDtypeStruct((b, l), np.int32)).compile()
                     for b in BATCH_SIZES for l in self.lengths}
    self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    self._search = recall.search

  def info(self) -> dict:
    return {"model_step": self.step, "run": self.run, "items": len(self.item_ids), "dimensions": self.config.hidden_size,
            "seq_length": self.config.seq_length, "checkpoint": self.checkpoint, "loaded_at": self.loaded_at,
            "index": type(self.index).__name__}

  def parse(self, request: dict, max_top_n: int) -> Query:
    rows = [self.row_of.get(item) for item in request["clicks"]]
    known = tuple(r for r in rows if r is not None)
    top_n = request["top_n"]
    if not 1 <= top_n <= min(max_top_n, len(self.item_ids)):
      raise InputError(f"top_n={top_n}: must be in [1, {min(max_top_n, len(self.item_ids))}]")
    return Query(known, top_n, request["exclude_clicked"], len(rows) - len(known))

  def recall(self, queries: list) -> list:
    """The answers to `queries`, in order: one encoder call and one search per BATCH_SIZES chunk."""
    out = []
    for start in range(0, len(queries), BATCH_SIZES[-1]):
      out += self._recall_chunk(queries[start:start + BATCH_SIZES[-1]])
    return out

  def _recall_chunk(self, queries: list) -> list:
    answers = [None] * len(queries)
    encoded = [i for i, q in enumerate(queries) if q.rows]
    for i, q in enumerate(queries):
      if not q.rows:
        n = q.top_n
        answers[i] = {"items": self.item_ids[self.popular[:n]].tolist(),
                      "scores": self.popular_counts[:n].tolist(), "unknown_clicks": q.unknown_clicks,
                      "model_step": self.step, "run": self.run, "fallback": "popular"}
    if not encoded:
      return answers
    seq_length = self.config.seq_length
    longest = max(min(len(queries[i].rows), seq_length) for i in encoded)
    length = next(l for l in self.lengths if l >= longest)
    batch = next(b for b in BATCH_SIZES if b >= len(encoded))
    ids_BxL = np.zeros((batch, length), np.int32)
    for r, i in enumerate(encoded):
      last = np.asarray(queries[i].rows[-seq_length:], np.int32) + 1  # table ids: row + 1
      ids_BxL[r, length - min(len(last), length):] = last[-length:]
    user_BxD = np.asarray(self.encoders[(batch, length)](self.params, ids_BxL))[:len(encoded)]
    visits = [np.unique(queries[i].rows) if queries[i].exclude_clicked else np.zeros(0, np.int64)
              for i in encoded]
    indptr = np.concatenate([[0], np.cumsum([len(v) for v in visits])])
    top_n = max(queries[i].top_n for i in encoded)
    items_BxN, scores_BxN = self._search(self.index, self.item_emb, user_BxD, indptr, np.concatenate(visits),
                                         top_n, self.exact_index)
    for r, i in enumerate(encoded):
      n = queries[i].top_n
      keep = items_BxN[r, :n] >= 0
      answers[i] = {"items": self.item_ids[items_BxN[r, :n][keep]].tolist(),
                    "scores": scores_BxN[r, :n][keep].astype(float).tolist(),
                    "unknown_clicks": queries[i].unknown_clicks, "model_step": self.step, "run": self.run}
    return answers


class Batcher:
  """Collects the queries that arrive together into one model call on a worker thread."""

  def __init__(self, server: "Server", max_batch: int, max_wait_s: float, enabled: bool, max_queue: int):
    self.server, self.max_batch, self.max_wait_s, self.enabled = server, max_batch, max_wait_s, enabled
    self.max_queue = max_queue
    self.waiting = 0  # queries submitted and not yet answered: queued, in a forming batch or encoding
    self.queue = asyncio.Queue()
    self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxrec-encoder")

  def full(self) -> bool:
    return self.waiting >= self.max_queue

  def overload_message(self) -> str:
    return (f"overloaded: {self.waiting} queries wait for answers (--max_queue={self.max_queue}); "
            f"retry after {RETRY_AFTER_S} s")

  async def submit(self, model: "ServedModel", queries: list) -> list:
    """The answers of `queries`, parsed against `model`, which also answers them. Overloaded
    while max_queue queries wait: the wait of an admitted request stays bounded."""
    # The check and the count are one step of the event loop: no other submit runs between them.
    if self.full():
      raise Overloaded(self.overload_message())
    self.waiting += len(queries)
    try:
      future = asyncio.get_running_loop().create_future()
      self.queue.put_nowait((model, queries, future))
      return await future
    finally:
      self.waiting -= len(queries)

  async def run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      pending = [await self.queue.get()]
      size = len(pending[0][1])
      deadline = loop.time() + self.max_wait_s
      while self.enabled and size < self.max_batch:
        try:
          pending.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
        except asyncio.TimeoutError:
          break
        size += len(pending[-1][1])
      # Each request is answered by the model it was parsed against (a reload swaps
      # server.model; requests in flight keep theirs): one call per model in the batch.
      for model in {id(m): m for m, _, _ in pending}.values():
        group = [(qs, future) for m, qs, future in pending if m is model]
        try:
          answers = await loop.run_in_executor(self.executor, model.recall, [q for qs, _ in group for q in qs])
        except Exception as e:  # noqa: BLE001 (answered as a 500 to these requests only)
          for _, future in group:
            if not future.done():  # a cancelled request's future takes no answer
              future.set_exception(e)
          continue
        for qs, future in group:
          if not future.done():
            future.set_result(answers[:len(qs)])
          answers = answers[len(qs):]


class Server:
  """The current model and how to replace it."""

  def __init__(self, load):
    self._load = load
    self.model = load()
    self._reload_lock = asyncio.Lock()

  async def reload(self) -> dict:
    async with self._reload_lock:
      previous = self.model
      self.model = await asyncio.to_thread(self._load)  # built beside the old one, then swapped
      console.info("%s: reloaded: model step %d (was %d), %d items", PROG, self.model.step, previous.step,
                   len(self.model.item_ids))
      return {"model_step": self.model.step, "previous_step": previous.step}


async def watch(server: Server, workdir: str, which: str, every_s: float) -> None:
  """--watch_s: reloads when the checkpoint a load would take is not the one serving. A failure
  is reported once; a target that failed to load is retried only once the target changes."""
  failed, reported = None, None
  while True:
    await asyncio.sleep(every_s)
    try:
      target = (await asyncio.to_thread(newest_checkpoint, workdir, which))[1]
      if target in (server.model.checkpoint, failed):
        continue
      failed = target
      await server.reload()
      failed = reported = None
    except Exception as e:  # noqa: BLE001 (the old model keeps serving)
      message = " ".join(str(e).split())
      if message != reported:
        console.info("%s: reload failed, still serving step %d of %s: %s", PROG, server.model.step,
                     server.model.run, message)
        reported = message


def request_schema():
  from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

  class RecallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    clicks: list[str] = Field(description="Item ids, oldest first; only the last seq_length known ones are read.")
    top_n: int = 50
    exclude_clicked: bool = True

  return TypeAdapter(RecallRequest), TypeAdapter(RecallRequest | list[RecallRequest])


def json_content_type(header: str) -> bool:
  """Whether a request body with this Content-Type is read as JSON in UTF-8. None at all, and
  the form type that `curl -d` and Python's urllib send by default, are taken as JSON too."""
  media, *params = [part.strip().lower() for part in header.split(";")]
  charsets = [p.partition("=")[2].strip('"') for p in params if p.partition("=")[0].strip() == "charset"]
  return (media in ("", "application/json", "application/x-www-form-urlencoded")
          and all(c == "utf-8" for c in charsets))


def _unique_keys(pairs: list) -> dict:
  value = dict(pairs)
  if len(value) != len(pairs):  # the last would win silently: the client meant one of them
    seen = set()
    raise InputError(f"duplicate key {next(k for k, _ in pairs if k in seen or seen.add(k))!r}")
  return value


def _no_constant(name: str):
  raise InputError(f"{name} is not JSON")


def parse_json(body: bytes):
  """The JSON value of a request body (RFC 8259: UTF-8 without a byte order mark, no NaN or
  Infinity), with no duplicate keys, no unpaired surrogate and at most MAX_DEPTH levels, or
  InputError saying which rule it breaks."""
  try:
    text = body.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"body is not UTF-8: {e}") from None
  if text.startswith("\ufeff"):
    raise InputError("body starts with a byte order mark: send UTF-8 without one")
  too_deep = InputError(f"JSON nested deeper than {MAX_DEPTH} levels")
  try:
    value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
  except RecursionError:  # the parser's own guard, near the interpreter's recursion limit
    raise too_deep from None
  except ValueError as e:
    raise InputError(f"malformed JSON: {e}") from None
  # Opening brackets bound the depth; most bodies have fewer than MAX_DEPTH and skip the walk.
  if text.count("[") + text.count("{") > MAX_DEPTH:
    level = [value] if isinstance(value, (list, dict)) else []  # the lists and objects at depth 1
    for _ in range(MAX_DEPTH):
      level = [v for c in level for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, (list, dict))]
    if level:
      raise too_deep
  if "\\u" in text:  # only a \u escape puts a surrogate into a string decoded from UTF-8
    try:
      json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
      raise InputError("a string holds an unpaired surrogate (\\ud800-\\udfff): not Unicode text") from None
  return value


def build_app(server: Server, batcher: Batcher, limits: dict):

  one, schema = request_schema()
  app_ = FastAPI(title="jaxrec", description="Recall for fresh click sequences.")

  def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """Every error of every route: one line of JSON, {"error": message}."""
    message = " ".join(str(message).split())
    if len(message) > MAX_ERROR_CHARS:  # cut in the middle: the head says where, the tail what
      half = (MAX_ERROR_CHARS - 3) // 2
      message = message[:half] + "..." + message[-half:]
    # An unpaired surrogate would fail the response's UTF-8 encoding: written as its escape.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status_code=status, headers=headers)

  async def overloaded(message: str) -> JSONResponse:
    # The wait costs a sleeping coroutine, no CPU: a client that retries at once can send
    # a shed request only every shed_delay_ms per connection.
    await asyncio.sleep(limits["shed_delay_ms"] / 1000)
    return error(503, message, {"Retry-After": str(RETRY_AFTER_S)})

  @app_.exception_handler(Exception)
  async def internal(request, exc):
    console.info("%s: error answering %s: %s", PROG, request.url.path, " ".join(str(exc).split()))
    return error(500, "internal error")

  # The router's own answers (404 unknown route, 405 wrong method with its Allow header) and
  # FastAPI's parameter validation, in the same shape instead of FastAPI's {"detail": ...}.
  @app_.exception_handler(StarletteHTTPException)
  async def http_error(request, exc):
    return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", exc.headers)

  @app_.exception_handler(RequestValidationError)
  async def invalid(request, exc):
    first = (exc.errors() or [{"loc": (), "msg": "invalid request"}])[0]
    return error(422, f"{'.'.join(map(str, first['loc'])) or 'request'}: {first['msg']}")

  @app_.get("/healthz")
  async def healthz():
    return {"status": "ok", "model_step": server.model.step, "waiting": batcher.waiting}

  @app_.get("/v1/model")
  async def model_info():
    return server.model.info()

  @app_.post("/v1/recall", openapi_extra={"requestBody": {"required": True, "content": {
      "application/json": {"schema": schema.json_schema()}}}})
  async def recall_endpoint(request: Request):
    if batcher.full():  # refused before the body is read and parsed: shedding must cost little
      return await overloaded(batcher.overload_message())
    content_type = request.headers.get("content-type", "")
    if not json_content_type(content_type):
      return error(415, f"Content-Type {content_type!r}: send application/json in UTF-8")
    limit = limits["max_body_bytes"]
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
      return error(413, f"body of {declared} bytes is over the limit of {limit}")
    body = bytearray()
    try:
      async for chunk in request.stream():  # never more than the limit in memory
        body += chunk
        if len(body) > limit:
          return error(413, f"body of over {limit} bytes is over the limit of {limit}")
    except ClientDisconnect:  # no one reads this answer; not a server error
      return error(400, "the client left before sending the whole body")
    try:
      data = parse_json(bytes(body))
    except InputError as e:
      return error(400, str(e))
    single = not isinstance(data, list)
    items = [data] if single else data
    if not items or len(items) > limits["max_requests"]:
      return error(400, f"a list body holds 1 to {limits['max_requests']} requests, not {len(items)}")
    requests = []
    for i, item in enumerate(items):
      try:
        requests.append(one.validate_python(item))
      except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in ([] if single else [i]) + list(first["loc"]))
        return error(400, f"{where.lstrip('.') or 'body'}: {first['msg']}")
    model = server.model
    try:
      queries = [model.parse(r.model_dump(), limits["max_top_n"]) for r in requests]
    except InputError as e:
      return error(400, str(e))
    try:
      answers = await batcher.submit(model, queries)
    except Overloaded as e:
      return await overloaded(str(e))
    # Serialised here by json.dumps: FastAPI's jsonable_encoder walked every list item by item and
    # was a sixth of the event loop's time at 64 connections (BENCHMARKS, "Serving").
    return Response(json.dumps(answers[0] if single else answers), media_type="application/json")

  @app_.post("/admin/reload")
  async def reload(request: Request):
    host = request.client.host if request.client else ""
    if not limits["remote_admin"] and not _is_loopback(host):
      return error(403, "reload is accepted from loopback only (--remote_admin to allow others)")
    try:
      return await server.reload()
    except InputError as e:
      return error(409, f"reload failed, still serving step {server.model.step}: {e}")

  return app_


def _is_loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def _bind(host: str, port: int) -> socket.socket:
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  # Accepted connections inherit it: a response is not held back waiting for the client's
  # delayed ACK of its first segment (40 ms a request on Linux otherwise).
  sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise InputError(f"--host={host} --port={port}: cannot bind: {e.strerror}") from None
  sock.listen(2048)
  return sock


def main(argv) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need --)")
  sections = config_flags.sections_from_flags(config_flags.SERVE_SECTIONS)
  cfg = sections["serve"]
  if not cfg.workdir:
    raise InputError("--workdir: required")
  load = functools.partial(ServedModel, cfg.workdir, cfg.checkpoints, sections["index"])
  sock = _bind(cfg.host, cfg.port)
  host, port = sock.getsockname()[:2]
  holder = {}

  @contextlib.asynccontextmanager
  async def lifespan(app_):
    loop = asyncio.get_running_loop()
    async def reload_on_signal():
      try:
        await holder["server"].reload()
      except Exception as e:  # noqa: BLE001 (the old model keeps serving)
        console.info("%s: reload failed, still serving step %d: %s", PROG, holder["server"].model.step,
                     " ".join(str(e).split()))
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_on_signal()))
    worker = loop.create_task(holder["batcher"].run())
    watcher = None
    if cfg.watch_s:
      watcher = loop.create_task(watch(holder["server"], cfg.workdir, cfg.checkpoints, cfg.watch_s))
    model = holder["server"].model
    print(f"{PROG}: ready on http://{host}:{port} (model step {model.step}, {len(model.item_ids)} items)",
          file=sys.stderr, flush=True)
    yield
    worker.cancel()
    if watcher:
      watcher.cancel()

  async def serve():
    holder["batcher"] = Batcher(holder["server"], cfg.max_batch, cfg.max_wait_ms / 1000, cfg.batching,
                                cfg.max_queue)
    limits = {k: getattr(cfg, k) for k in ("max_top_n", "max_body_bytes", "max_requests", "remote_admin",
                                           "shed_delay_ms")}
    app_ = build_app(holder["server"], holder["batcher"], limits)
    app_.router.lifespan_context = lifespan
    config = uvicorn.Config(app_, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    await uvicorn.Server(config).serve(sockets=[sock])

  holder["server"] = Server(load)  # loads and compiles; a SIGTERM meanwhile ends the process
  # uvicorn drains on SIGTERM, then re-raises it to the handler it found: a no-op here, so a
  # drained server exits 0.
  signal.signal(signal.SIGTERM, lambda signum, frame: None)
  asyncio.run(serve())
  console.info("%s: stopped", PROG)


def run() -> None:
  config_flags.define_flags(config_flags.SERVE_SECTIONS)
  def guarded(argv):
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    with errors.exit_on_input_error(PROG):
      main(argv)
  app.run(guarded, flags_parser=errors.flags_parser(
      PROG, config_flags.help_text(config_flags.SERVE_SECTIONS, "jaxrec.serve")))


if __name__ == "__main__":
  run()
