"""The daily cycle's traps, each as a user met it on their own CSV (string ids, ISO times):
a warm start from a production run, an unfinished base, eval of a model that trained on every
click, an export that forgets the time column, and publishing a day that the server follows."""

import os
import random
import shutil
import time

import httpx
import pytest

from deadlines import wait_for
from main_test import cli, ok, refused
from serve_test import Served

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--hidden_size=16 --num_hidden_layers=1 --seq_length=10 --batch_size=32 --num_epochs=2 "
        "--eval_ks=10,20 --time_col=ts").split()


def write_day(path, day: int, users=150, items=50) -> str:
  """A shuffled CSV of `day` days of clicks; day 2 brings item sku-new."""
  rng = random.Random(day)
  rows = []
  for u in range(users):
    for d in range(day):
      for t in range(2 + u % 3):
        item = "sku-new" if d == 1 and u % 5 == 0 and t == 0 else f"sku-{(u * 3 + d * 7 + t) % items}"
        rows.append(f"user-{u},{item},2026-12-{1 + d:02d}T{8 + t:02d}:{u % 60:02d}:00Z")
  rng.shuffle(rows)
  with open(path, "w") as f:
    f.write("user,item,ts\n" + "\n".join(rows) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def day1(tmp_path_factory):
  root = tmp_path_factory.mktemp("daily")
  data = write_day(root / "day1.csv", 1)
  link = str(root / "current")
  ok(*TINY, f"--data_path={data}", f"--workdir={root}/day1", "--holdout=none", f"--publish={link}")
  return root, data, link


def test_a_production_run_warm_starts_with_default_flags_and_an_unfinished_one_is_refused(day1, tmp_path):
  root, _, _ = day1
  data2 = write_day(tmp_path / "day2.csv", 2)
  # --holdout=none leaves best/ empty: the default took it and failed ("no checkpoint in .../best").
  ok(*TINY, f"--data_path={data2}", f"--workdir={tmp_path}/day2", f"--init_from={root}/day1", "--holdout=none")
  os.remove(tmp_path / "day2" / "_SUCCESS")  # as if it were still running, or was killed
  line = refused(*TINY, f"--data_path={data2}", f"--workdir={tmp_path}/day3", f"--init_from={tmp_path}/day2")
  assert f"--init_from={tmp_path}/day2: its run has not finished (no _SUCCESS)" in line
  assert not os.path.exists(tmp_path / "day3")


def test_eval_of_a_model_that_trained_on_every_click_is_refused(day1):
  root, data, _ = day1
  # It printed a "test" HR@10 measured on clicks the model trained on, and logged it as a test row.
  line = refused(*TINY, f"--data_path={data}", f"--workdir={root}/day1", "--mode=eval")
  assert "trained on every click (--holdout=none)" in line
  assert not os.path.exists(root / "day1" / "metrics.jsonl") or "test" not in open(root / "day1" / "metrics.jsonl").read()


def test_an_export_that_reads_the_log_otherwise_than_training_is_refused(day1, tmp_path):
  root, data, _ = day1
  # Without --time_col the shuffled file is read in file order: other histories, other vectors, exit 0.
  args = [a for a in TINY if a != "--time_col=ts"]
  line = refused(*args, f"--data_path={data}", f"--workdir={root}/day1", "--mode=export",
                 f"--output={tmp_path}/e.npz")
  assert "--time_col ts there,  now" in line
  assert not os.path.exists(tmp_path / "e.npz")


# production.flags shrunk to test size: the recipe's model kind (full softmax, shared table,
# feed-forward, LayerNorm, the BSARec filter) on every click, at a tiny width and length.
PRODUCTION = (f"--flagfile={REPO}/experiments/production.flags --hidden_size=16 --feed_forward_size=32 "
              "--num_hidden_layers=1 --seq_length=10 --batch_size=32 --num_epochs=2 --time_col=ts").split()


def histories(path) -> dict:
  """Each user's items in time order, as the server is to be asked for them."""
  rows = [line.split(",") for line in open(path).read().splitlines()[1:]]
  out = {}
  for user, item, ts in sorted(rows, key=lambda r: (r[0], r[2])):
    out.setdefault(user, []).append(item)
  return out


def test_two_production_days_published_served_and_a_failed_third_leaves_the_second(tmp_path):
  """docs/production.md as a scheduler runs it: day 1 from production.flags, published at its
  export and served; day 2 warm-starts with default flags, is published, the server follows it
  after a reload and answers as offline recall does; a failed day 3 leaves day 2 serving."""
  link, days = str(tmp_path / "current"), {}
  for day in (1, 2):
    data = write_day(tmp_path / f"day{day}.csv", day)
    common = [*PRODUCTION, f"--data_path={data}", f"--workdir={tmp_path}/day{day}"]
    warm = [f"--init_from={tmp_path}/day1"] if day == 2 else []
    ok(*common, *warm)
    ok(*common, *warm, "--mode=export", f"--publish={link}")
    assert os.path.realpath(link) == str(tmp_path / f"day{day}")
    result = cli(f"--embeddings={tmp_path}/day{day}/embeddings.npz", "--top_n=5",
                 f"--output={tmp_path}/recall{day}.tsv", module="jaxrec.recall")
    assert result.returncode == 0, result.stderr
    days[day] = data
    if day == 1:
      server = Served(f"--workdir={link}")
  try:
    with httpx.Client(base_url=server.url, timeout=30) as client:
      before = client.post("/v1/recall", json={"clicks": ["sku-new", "sku-3"], "top_n": 5}).json()
      assert before["run"] == str(tmp_path / "day1") and before["unknown_clicks"] == 1
      # A failed day 3 (its log is missing) stops the schedule: no workdir, the link as it was.
      refused(*PRODUCTION, f"--data_path={tmp_path}/missing.csv", f"--workdir={tmp_path}/day3",
              f"--init_from={tmp_path}/day2")
      assert os.path.realpath(link) == str(tmp_path / "day2") and not os.path.exists(tmp_path / "day3")
      reload = client.post("/admin/reload")
      assert reload.status_code == 200, reload.text
      after = client.post("/v1/recall", json={"clicks": ["sku-new", "sku-3"], "top_n": 5}).json()
      assert after["run"] == str(tmp_path / "day2") and after["unknown_clicks"] == 0  # day 2's item is known
      # The served lists are day 2's offline recall lists for the same histories.
      offline = dict(line.split("\t") for line in open(tmp_path / "recall2.tsv").read().splitlines())
      users = sorted(histories(days[2]))[:40]
      served = client.post("/v1/recall", json=[{"clicks": histories(days[2])[u], "top_n": 5} for u in users]).json()
      same = sum(answer["items"] == offline[u].split(",") for u, answer in zip(users, served))
      assert same >= len(users) - 2, same  # a near-tie within float32 rounding may swap (recall contract)
  finally:
    assert server.stop()[0] == 0


def test_a_watching_server_follows_the_link_and_keeps_serving_past_a_broken_target(day1, tmp_path):
  """--watch_s: a repointed link is served without a SIGHUP; a target that cannot load is
  reported once and the last good model goes on answering."""
  root, _, _ = day1
  link = str(tmp_path / "current")
  os.symlink(f"{root}/day1", link)
  server = Served(f"--workdir={link}", "--watch_s=0.2")
  try:
    with httpx.Client(base_url=server.url, timeout=30) as client:
      def served_run():
        return client.post("/v1/recall", json={"clicks": ["sku-3"], "top_n": 5}).json()["run"]
      assert served_run() == f"{root}/day1"
      shutil.copytree(f"{root}/day1", tmp_path / "copy")  # the same model under another run
      os.symlink(tmp_path / "copy", link + ".tmp")
      os.replace(link + ".tmp", link)
      assert wait_for(lambda: served_run() == str(tmp_path / "copy")), "the server did not follow the link"
      os.makedirs(tmp_path / "broken/checkpoints/7")  # a checkpoint without a model_config.json
      os.symlink(tmp_path / "broken", link + ".tmp")
      os.replace(link + ".tmp", link)
      time.sleep(1.0)  # five polls
      assert served_run() == str(tmp_path / "copy")
  finally:
    code, err = server.stop()
  assert code == 0
  assert err.count("reload failed") == 1 and "no trained model here" in err, err  # said once, not per poll
