"""What any client can send the real server: generated JSON values and bytes never get a 5xx,
every refusal is one line of JSON, and a full queue sheds load with 503 and Retry-After."""

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import httpx
import pytest

from serve_test import LOG, Served, trained  # noqa: F401 (trained: the module fixture, reused)

ITEMS = sorted(set(LOG.item_ids[LOG.items].tolist()))
# Any str, unpaired surrogates included (and made common): the client writes them as \ud800 escapes.
TEXT = st.text(st.characters(exclude_categories=()) | st.sampled_from(["\ud800", "\udfff"]), max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,  # floats: NaN and infinities too
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["clicks", "top_n", "exclude_clicked"]) | TEXT, children, max_size=4),
    max_leaves=16)
# Close to a request, so that generated bodies also reach the schema, top_n's range and the model.
REQUEST = st.fixed_dictionaries(
    {"clicks": st.lists(st.sampled_from(ITEMS) | TEXT | JSON, max_size=6)},
    optional={"top_n": st.integers(-2, 200) | st.integers() | JSON, "exclude_clicked": st.booleans() | JSON})
BODIES = REQUEST | st.lists(REQUEST, min_size=0, max_size=3) | JSON
# Deeper than the parser's recursion limit, and around MAX_DEPTH: [[[1]]], {"a": {"a": 1}}.
NESTED = st.tuples(st.integers(1, 3000) | st.integers(30, 34), st.sampled_from([("[", "]"), ('{"a": ', "}")])).map(
    lambda t: (t[1][0] * t[0] + "1" + t[1][1] * t[0]).encode())
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server(trained):  # noqa: F811 (the fixture imported above)
  served = Served(f"--workdir={trained[1]}")
  yield served
  code, stderr = served.stop()
  assert code == 0 and "Traceback" not in stderr and "error answering" not in stderr, stderr


def check(response: httpx.Response) -> None:
  """No 5xx; a refusal is one line of JSON holding only an error message; an answer is a list."""
  assert response.status_code in (200, 400, 413, 415), response.text
  if response.status_code == 200:
    answers = response.json()
    assert all("items" in answer for answer in (answers if isinstance(answers, list) else [answers]))
  else:
    assert "\n" not in response.text and list(response.json()) == ["error"], response.text
    assert response.headers["content-type"] == "application/json"


def test_generated_json_bodies_get_an_answer_or_a_4xx_never_a_5xx(server):
  with httpx.Client(base_url=server.url, timeout=60) as client:

    @PROPERTY
    @given(value=BODIES, ascii_only=st.booleans())
    def post(value, ascii_only):
      # NaN and Infinity written as Python does; raw surrogates, unless escaped, as invalid UTF-8.
      body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
      check(client.post("/v1/recall", content=body, headers={"content-type": "application/json"}))

    post()
    assert client.get("/healthz").json()["status"] == "ok"


def test_generated_bytes_get_a_4xx_never_a_5xx(server):
  with httpx.Client(base_url=server.url, timeout=60) as client:

    @PROPERTY
    @given(body=st.binary(max_size=64) | BODIES.map(lambda v: json.dumps(v).encode()[:-1]) | NESTED,
           content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-16", ""]))
    def post(body, content_type):
      check(client.post("/v1/recall", content=body, headers={"content-type": content_type} if content_type else {}))

    post()
    assert client.get("/healthz").json()["status"] == "ok"


def test_a_full_queue_answers_503_with_retry_after_and_the_rest_200(trained):  # noqa: F811
  # Each admitted request waits the 200 ms a batch has to fill, so requests sent together find the
  # one-query queue full; the first of a burst always finds it empty.
  served = Served(f"--workdir={trained[1]}", "--max_queue=1", "--max_wait_ms=200")

  async def burst(n: int) -> list:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as client:
      return await asyncio.gather(*(client.post("/v1/recall", json={"clicks": ITEMS[k:k + 3], "top_n": 5})
                                    for k in range(n)))

  try:
    responses = []
    for _ in range(10):  # a burst on a busy machine may arrive spread out; a few more then
      responses += asyncio.run(burst(16))
      if {r.status_code for r in responses} == {200, 503}:
        break
    after = httpx.post(served.url + "/v1/recall", json={"clicks": ITEMS[:3], "top_n": 5}, timeout=60)
  finally:
    code, stderr = served.stop()
  assert {r.status_code for r in responses} == {200, 503}, [r.status_code for r in responses]
  for response in responses:
    if response.status_code == 503:
      assert response.headers["retry-after"] == "1" and "\n" not in response.text
      assert list(response.json()) == ["error"] and "--max_queue=1" in response.json()["error"]
    else:
      assert len(response.json()["items"]) == 5
  assert after.status_code == 200, after.text  # every answered request left the queue
  assert code == 0 and "Traceback" not in stderr, stderr
