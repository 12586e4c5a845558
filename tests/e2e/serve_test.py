"""The real server on a free loopback port, talked to with a real HTTP client: lists identical
to export + jaxrec.recall, bad input, the popular fallback, reload under load, SIGTERM."""

import asyncio
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from deadlines import wait_for
from jaxrec import click_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--hidden_size=16 --num_hidden_layers=1 --seq_length=10 --batch_size=32 --num_epochs=2 "
        "--eval_ks=10,20").split()
LOG = click_log.synthetic_click_log(400, 150, seed=2)
N_ITEMS = len(np.unique(LOG.items))  # the items the log file holds: the model's catalog
READY = re.compile(r"^jaxrec\.serve: ready on (http://[\d.]+:\d+) \(model step (\d+), (\d+) items\)$")


def env(**extra):
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def run(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], env=env(), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  return result


class Served:
  """A `python -m jaxrec.serve` process; `url` once its ready line is printed."""

  def __init__(self, *args, deadline_s: float = 300, extra_env: dict | None = None):
    self.proc = subprocess.Popen([sys.executable, "-m", "jaxrec.serve", "--port=0", *args], env=env(**extra_env or {}),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.lines = []
    # The ready line is read on a thread, so a server stuck before it fails the test at the
    # deadline instead of hanging the suite.
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(self.proc.stderr.readline()), daemon=True).start()
    end = time.monotonic() + deadline_s
    while True:
      try:
        line = lines.get(timeout=max(end - time.monotonic(), 0))
      except queue.Empty:
        self.proc.kill()
        raise AssertionError(f"server not ready after {deadline_s} s:\n" + "".join(self.lines)) from None
      assert line, "server exited before it was ready:\n" + "".join(self.lines)
      self.lines.append(line)
      match = READY.match(line.strip())
      if match:
        self.url, self.step = match.group(1), int(match.group(2))
        return
      threading.Thread(target=lambda: lines.put(self.proc.stderr.readline()), daemon=True).start()

  def stop(self, sig=signal.SIGTERM) -> tuple:
    self.proc.send_signal(sig)
    out, err = self.proc.communicate(timeout=60)
    return self.proc.returncode, "".join(self.lines) + err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("served")
  path = root / "clicks.txt"
  with open(path, "w") as f:
    for u in range(LOG.num_users):
      f.write(" ".join([LOG.user_ids[u], *LOG.item_ids[LOG.items[LOG.indptr[u]:LOG.indptr[u + 1]]]]) + "\n")
  workdir = str(root / "workdir")
  run("jaxrec.main", *TINY, f"--data_path={path}", f"--workdir={workdir}")
  run("jaxrec.main", *TINY, f"--data_path={path}", f"--workdir={workdir}", "--mode=export")
  tsv = str(root / "recall.tsv")
  run("jaxrec.recall", f"--embeddings={workdir}/embeddings.npz", "--top_n=20", f"--output={tsv}")
  return str(path), workdir, tsv


@pytest.fixture(scope="module")
def server(trained):
  served = Served(f"--workdir={trained[1]}")
  yield served
  served.stop()


def histories(path) -> dict:
  out = {}
  for line in open(path):
    user, *items = line.split()
    out[user] = items
  return out


def assert_lists_match_offline(users: list, served: list, tsv: str, workdir: str) -> None:
  """Served lists equal jaxrec.recall's on the exported vectors; a near-tie inside float32
  rounding may come in either order (the recall contract), checked in float64."""
  offline = dict(line.rstrip("\n").split("\t") for line in open(tsv))
  npz = np.load(os.path.join(workdir, "embeddings.npz"))
  assert len(served) == len(users)
  assert all(a["model_step"] == int(npz["step"]) and a["unknown_clicks"] == 0 for a in served)
  row = {u: r for r, u in enumerate(npz["user_ids"])}
  item_row = {i: r for r, i in enumerate(npz["item_ids"])}
  same = 0
  for (user, _), answer in zip(users, served):
    want = offline[user].split(",")
    same += answer["items"] == want
    if answer["items"] != want:
      u = npz["user_emb"][row[user]].astype(np.float64)
      scores = npz["item_emb"].astype(np.float64) @ u
      tol = (u.size + 2) * 2.0 ** -23 * np.abs(npz["item_emb"] * u).sum(axis=1).max()
      assert sorted(answer["items"]) == sorted(want) or abs(
          scores[item_row[answer["items"][-1]]] - scores[item_row[want[-1]]]) <= tol
      np.testing.assert_allclose(scores[[item_row[i] for i in answer["items"]]],
                                 scores[[item_row[i] for i in want]], atol=tol)
  assert same >= 0.99 * len(users)


def test_served_lists_equal_export_plus_recall(trained, server):
  data, workdir, tsv = trained
  users = sorted(histories(data).items())
  served = []
  with httpx.Client(base_url=server.url, timeout=60) as client:
    for start in range(0, len(users), 50):  # list bodies, and with them several micro-batches
      body = [{"clicks": items, "top_n": 20} for _, items in users[start:start + 50]]
      response = client.post("/v1/recall", json=body)
      assert response.status_code == 200, response.text
      served += response.json()
    single = client.post("/v1/recall", json={"clicks": users[0][1], "top_n": 20}).json()
  # Alone the request runs at another batch size, which XLA rounds differently in the last bit.
  assert {k: v for k, v in single.items() if k != "scores"} == {k: v for k, v in served[0].items() if k != "scores"}
  np.testing.assert_allclose(single["scores"], served[0]["scores"], rtol=1e-5)
  with httpx.Client(base_url=server.url, timeout=60) as client:
    assert client.post("/v1/recall", json={"clicks": users[0][1], "top_n": 20}).json() == single  # deterministic
  assert_lists_match_offline(users, served, tsv, workdir)


async def _recall_concurrently(url: str, users: list, clients: int = 8) -> list:
  """Every user's list, asked by `clients` concurrent clients in bodies of 1 to 7 requests
  (so micro-batches of every size form); answers in the users' order."""
  chunks, start = [], 0
  while start < len(users):
    size = 1 + len(chunks) % 7
    chunks.append(users[start:start + size])
    start += size
  answers = [None] * len(chunks)
  async with httpx.AsyncClient(base_url=url, timeout=120) as client:
    async def worker(k):
      for c in range(k, len(chunks), clients):
        body = [{"clicks": items, "top_n": 20} for _, items in chunks[c]]
        response = await client.post("/v1/recall", json=body[0] if len(body) == 1 else body)
        assert response.status_code == 200, response.text
        answers[c] = [response.json()] if len(body) == 1 else response.json()
    await asyncio.gather(*(worker(k) for k in range(clients)))
  return [a for chunk in answers for a in chunk]


@pytest.mark.parametrize("args", [(), ("--nobatching",), ("--max_batch=3",)], ids=["default", "nobatching", "max_batch3"])
def test_same_lists_whatever_the_batching_and_no_compile_after_start_up(trained, args):
  """Batching on, off and capped at 3 users a call give jaxrec.recall's lists, and nothing is
  compiled once the server is ready: every (batch, length) shape was compiled at start-up."""
  data, workdir, tsv = trained
  served = Served(f"--workdir={workdir}", *args, extra_env={"JAX_LOG_COMPILES": "1"})
  compiled_at_start = sum("Compiling " in line for line in served.lines)
  users = sorted(histories(data).items())
  answers = asyncio.run(_recall_concurrently(served.url, users))
  with httpx.Client(base_url=served.url, timeout=60) as client:  # the longest history the model takes, and more
    longest = client.post("/v1/recall", json={"clicks": LOG.item_ids[LOG.items[:60]].tolist(), "top_n": 5})
    assert longest.status_code == 200, longest.text
  code, stderr = served.stop()
  assert code == 0 and "Traceback" not in stderr, stderr
  after_ready = stderr[stderr.index("ready on"):]
  assert compiled_at_start > 0, "JAX_LOG_COMPILES logged nothing: this test would see no compile"
  assert "Compiling " not in after_ready, after_ready[:2000]
  assert_lists_match_offline(users, answers, tsv, workdir)


def test_unknown_clicks_are_counted_and_no_known_click_gets_the_popular_items(trained, server):
  data, workdir, _ = trained
  with httpx.Client(base_url=server.url, timeout=60) as client:
    user, items = next(iter(histories(data).items()))
    with_unknown = client.post("/v1/recall", json={"clicks": ["nope", *items, "nada"], "top_n": 20}).json()
    plain = client.post("/v1/recall", json={"clicks": items, "top_n": 20}).json()
    assert with_unknown["unknown_clicks"] == 2 and with_unknown["items"] == plain["items"]
    cold = client.post("/v1/recall", json={"clicks": ["nope"], "top_n": 5}).json()
  # Most clicked items of the training clicks (each user's last two are held out), naively.
  counts = {}
  for items in histories(data).values():
    for item in items[:-2] if len(items) >= 3 else items:
      counts[item] = counts.get(item, 0) + 1
  top = sorted(counts.values(), reverse=True)[:5]
  assert cold["fallback"] == "popular" and cold["unknown_clicks"] == 1
  assert [counts[i] for i in cold["items"]] == top and cold["scores"] == [float(c) for c in top]


def test_clicks_that_are_not_recalled_unless_asked(trained, server):
  data, _, _ = trained
  _, items = next(iter(histories(data).items()))
  with httpx.Client(base_url=server.url, timeout=60) as client:
    excluded = client.post("/v1/recall", json={"clicks": items, "top_n": N_ITEMS - len(set(items))}).json()
    included = client.post("/v1/recall", json={"clicks": items, "top_n": N_ITEMS, "exclude_clicked": False}).json()
  assert not set(excluded["items"]) & set(items) and len(excluded["items"]) == N_ITEMS - len(set(items))
  assert set(included["items"]) == set(LOG.item_ids[np.unique(LOG.items)])


@pytest.mark.parametrize("body, status, message", [
    (b"{oops", 400, "malformed JSON"),
    (b'{"clicks": "i1"}', 400, "clicks: Input should be a valid list"),
    (b'{"clicks": [1, 2]}', 400, "clicks[0]: Input should be a valid string"),
    (b'[{"clicks": ["i1"]}, {"clicks": ["i1"], "top_n": "5"}]', 400, "[1].top_n: Input should be a valid integer"),
    (b'{"clicks": ["i1"], "top_n": 0}', 400, f"top_n=0: must be in [1, {N_ITEMS}]"),
    (f'{{"clicks": ["i1"], "top_n": {N_ITEMS + 1}}}'.encode(), 400, f"top_n={N_ITEMS + 1}: must be in [1, {N_ITEMS}]"),
    (b'{"clicks": ["i1"], "colour": "red"}', 400, "colour: Extra inputs are not permitted"),
    (b"[]", 400, "a list body holds 1 to 1024 requests, not 0"),
    (json.dumps([{"clicks": ["i1"]}] * 1025).encode(), 400, "a list body holds 1 to 1024 requests, not 1025"),
    (json.dumps({"clicks": ["i1"] * 300_000}).encode(), 413, "over the limit of 1048576"),
    # Bodies that were answered 500 (the parser's recursion) or silently taken (the rest).
    (b"[" * 10_000 + b"]" * 10_000, 400, "JSON nested deeper than 32 levels"),
    (b'{"a": ' * 10_000 + b"1" + b"}" * 10_000, 400, "JSON nested deeper than 32 levels"),
    (b"[" * 33 + b"]" * 33, 400, "JSON nested deeper than 32 levels"),
    (b"[" * 32 + b"]" * 32, 400, "[0]: Input should be a valid dictionary"),
    (b'{"clicks": ["i1"], "top_n": NaN}', 400, "NaN is not JSON"),
    (b'{"clicks": [-Infinity]}', 400, "-Infinity is not JSON"),
    (b'{"clicks": ["i1"], "clicks": ["i2"]}', 400, "duplicate key 'clicks'"),
    (b'{"clicks": ["\\ud800"]}', 400, "unpaired surrogate"),
    (b'{"clicks": ["i1"], "\\udfff": 1}', 400, "unpaired surrogate"),
    (b'\xef\xbb\xbf{"clicks": ["i1"]}', 400, "byte order mark"),
    (b'{"clicks": ["\xe9"]}', 400, "body is not UTF-8"),
    ('{"clicks": ["i1"]}'.encode("utf-16"), 400, "body is not UTF-8"),
    (b"", 400, "malformed JSON"),
    # Wrong types and values that the schema refuses.
    (b'{"clicks": [1e999]}', 400, "clicks[0]: Input should be a valid string"),
    (b'{"clicks": [null]}', 400, "clicks[0]: Input should be a valid string"),
    (b'{"clicks": ["i1"], "top_n": 1e30}', 400, "top_n: Input should be a valid integer"),
    (b'{"clicks": ["i1"], "top_n": true}', 400, "top_n: Input should be a valid integer"),
    (b'{"clicks": ["i1"], "top_n": ' + b"9" * 4000 + b"}", 400, f": must be in [1, {N_ITEMS}]"),
    (b'{"clicks": ["i1"], "top_n": ' + b"9" * 5000 + b"}", 400, "malformed JSON"),
    (b'{"clicks": ["i1"], "' + b"k" * 100_000 + b'": 1}', 400, "Extra inputs are not permitted"),
    (b'"i1"', 400, "body: Input should be a valid dictionary"),
    (b"5", 400, "body: Input should be a valid dictionary"),
    (b"null", 400, "body: Input should be a valid dictionary"),
    (b"[null]", 400, "[0]: Input should be a valid dictionary"),
])
def test_bad_input_gets_a_4xx_with_a_one_line_json_error(server, body, status, message):
  with httpx.Client(base_url=server.url, timeout=60) as client:
    response = client.post("/v1/recall", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert "\n" not in response.text and message in response.json()["error"]
    assert len(response.json()["error"]) <= 300  # a message quoting a long key or value is cut
    assert client.get("/healthz").json()["status"] == "ok"  # still serving


def test_every_route_answers_a_client_mistake_with_a_one_line_json_error(server):
  with httpx.Client(base_url=server.url, timeout=60) as client:
    for method, path, status, message in [("GET", "/v1/recall", 405, "GET /v1/recall: Method Not Allowed"),
                                          ("POST", "/healthz", 405, "POST /healthz: Method Not Allowed"),
                                          ("GET", "/admin/reload", 405, "GET /admin/reload: Method Not Allowed"),
                                          ("PUT", "/v1/model", 405, "PUT /v1/model: Method Not Allowed"),
                                          ("GET", "/nope", 404, "GET /nope: Not Found"),
                                          ("POST", "/v1/recall/extra", 404, "POST /v1/recall/extra: Not Found")]:
      response = client.request(method, path)
      assert response.status_code == status and response.json() == {"error": message}, response.text
      assert "\n" not in response.text and response.headers["content-type"] == "application/json"
    assert client.get("/v1/recall").headers["allow"] == "POST"
    body = b'{"clicks": ["i1"], "top_n": 5}'
    for content_type in ("text/plain", "application/xml", "multipart/form-data", "application/json; charset=latin-1"):
      response = client.post("/v1/recall", content=body, headers={"content-type": content_type})
      assert response.status_code == 415 and "send application/json" in response.json()["error"], response.text
    # JSON, UTF-8 said or not, no type at all, and the form type `curl -d` and urllib send by default.
    for headers in ({"content-type": "application/json"}, {"content-type": "Application/JSON; charset=UTF-8"}, {},
                    {"content-type": "application/x-www-form-urlencoded"}):
      response = client.post("/v1/recall", content=body, headers=headers)
      assert response.status_code == 200 and len(response.json()["items"]) == 5, response.text
    # A surrogate pair is one character (U+1F600): an unknown click, not an unpaired surrogate.
    response = client.post("/v1/recall", content=b'{"clicks": ["\\ud83d\\ude00"], "top_n": 5}')
    assert response.status_code == 200 and response.json()["unknown_clicks"] == 1, response.text


def test_model_info_and_docs(server):
  with httpx.Client(base_url=server.url, timeout=60) as client:
    info = client.get("/v1/model").json()
    assert info["model_step"] == server.step and info["items"] == N_ITEMS and info["dimensions"] == 16
    assert client.get("/docs").status_code == 200
    assert "/v1/recall" in client.get("/openapi.json").json()["paths"]


async def _load(url: str, seconds: float, clicks: list, clients: int = 8) -> list:
  """Responses of `clients` concurrent request loops for `seconds` (bounded: loopback only)."""
  results = []
  async with httpx.AsyncClient(base_url=url, timeout=60) as client:
    async def loop(k):
      deadline = asyncio.get_running_loop().time() + seconds
      while asyncio.get_running_loop().time() < deadline and len(results) < 5000:
        try:
          response = await client.post("/v1/recall", json={"clicks": clicks[k % len(clicks)], "top_n": 10})
        except httpx.TransportError:  # the server closed its listener (SIGTERM)
          results.append((None, None))
          return
        results.append((response.status_code, response.json().get("model_step")))
    await asyncio.gather(*(loop(k) for k in range(clients)))
  return results


def test_reload_under_load_drops_nothing_and_sigterm_drains(trained, tmp_path):
  data, src, _ = trained
  workdir = str(tmp_path / "workdir")
  shutil.copytree(src, workdir)
  served = Served(f"--workdir={workdir}", "--checkpoints=latest")
  clicks = list(histories(data).values())[:20]
  run("jaxrec.main", *TINY, f"--data_path={data}", f"--workdir={workdir}", "--num_epochs=3",
      "--allow_changed_flags=num_epochs")

  async def load_and_reload():
    load = asyncio.create_task(_load(served.url, 8.0, clicks))
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
      reload = await client.post("/admin/reload")
    # Requests sent once the reload has answered: on a loaded machine it can outlast the
    # load above, so these say which model serves after it.
    after = await _load(served.url, 1.0, clicks, clients=2)
    return reload, await load, after

  reload, results, after = asyncio.run(load_and_reload())
  assert reload.status_code == 200, reload.text
  new_step = reload.json()["model_step"]
  assert reload.json()["previous_step"] == served.step < new_step
  assert results and all(status == 200 for status, _ in results)
  assert {step for _, step in results} <= {served.step, new_step}
  assert after and all(response == (200, new_step) for response in after)

  code, stderr = served.stop()
  assert code == 0 and "Traceback" not in stderr, stderr


def test_sigterm_answers_every_request_in_flight(trained):
  """Requests the server holds when SIGTERM arrives are all answered (the README's promise);
  a server that dropped them passed the old test, which counted a dropped request as refused."""
  data, workdir, _ = trained
  served = Served(f"--workdir={workdir}", "--max_wait_ms=3000")  # a batch waits 3 s for company
  clicks = list(histories(data).values())[:8]

  async def term_while_held():
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
      held = [asyncio.create_task(client.post("/v1/recall", json={"clicks": c, "top_n": 10})) for c in clicks]
      end = asyncio.get_running_loop().time() + 60
      while (await client.get("/healthz")).json()["waiting"] < len(clicks):  # all held in the batcher
        assert asyncio.get_running_loop().time() < end, "the requests never reached the server"
        await asyncio.sleep(0.01)
      served.proc.send_signal(signal.SIGTERM)
      return await asyncio.gather(*held, return_exceptions=True)

  answers = asyncio.run(term_while_held())
  assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
  assert all(len(a.json()["items"]) == 10 for a in answers)
  code = served.proc.wait(timeout=60)
  stderr = "".join(served.lines) + served.proc.stderr.read()
  assert code == 0 and "Traceback" not in stderr, stderr


def _model_step(url: str) -> int:
  with httpx.Client(base_url=url, timeout=60) as client:
    return client.get("/v1/model").json()["model_step"]


def test_sighup_reloads_the_newest_checkpoint(trained, tmp_path):
  data, src, _ = trained
  workdir = str(tmp_path / "workdir")
  shutil.copytree(src, workdir)
  served = Served(f"--workdir={workdir}", "--checkpoints=latest")
  run("jaxrec.main", *TINY, f"--data_path={data}", f"--workdir={workdir}", "--num_epochs=3",
      "--allow_changed_flags=num_epochs")
  assert _model_step(served.url) == served.step  # nothing reloads on its own without --watch_s
  served.proc.send_signal(signal.SIGHUP)
  assert wait_for(lambda: _model_step(served.url) != served.step, 120), "SIGHUP reloaded nothing in 120 s"
  new_step = _model_step(served.url)
  code, stderr = served.stop()
  assert new_step > served.step and code == 0 and "Traceback" not in stderr, stderr
  assert f"reloaded: model step {new_step} (was {served.step})" in stderr


def _non_loopback_address() -> str | None:
  """This machine's address on its default route (no packet is sent), if it has one."""
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    try:
      s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
    except OSError:
      return None
    address = s.getsockname()[0]
  return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.parametrize("remote_admin", [False, True])
def test_admin_reload_is_refused_from_other_hosts_unless_allowed(trained, remote_admin):
  address = _non_loopback_address()
  if address is None:
    pytest.skip("this machine has no non-loopback IPv4 address to connect from")
  _, workdir, _ = trained
  served = Served(f"--workdir={workdir}", "--host=0.0.0.0", *(["--remote_admin"] if remote_admin else []))
  port = served.url.rsplit(":", 1)[1]
  with httpx.Client(timeout=120) as client:
    remote = client.post(f"http://{address}:{port}/admin/reload")
    local = client.post(f"http://127.0.0.1:{port}/admin/reload")
    recall = client.post(f"http://{address}:{port}/v1/recall", json={"clicks": ["nope"], "top_n": 3})
  code, stderr = served.stop()
  assert code == 0 and "Traceback" not in stderr, stderr
  assert local.status_code == 200 and local.json()["model_step"] == served.step, local.text
  assert recall.status_code == 200  # only the admin route is closed to other hosts
  if remote_admin:
    assert remote.status_code == 200, remote.text
  else:
    assert remote.status_code == 403 and remote.json() == {
        "error": "reload is accepted from loopback only (--remote_admin to allow others)"}, remote.text
