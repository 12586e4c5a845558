"""Item features through the product, as a user runs it: a CSV log with string ids and times, a
feature CSV naming items nobody clicked (cold), then train, export, recall and serve."""

import os
import random
import subprocess
import sys

import httpx
import numpy as np
import pytest

from serve_test import Served

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--hidden_size=16 --num_hidden_layers=1 --seq_length=10 --batch_size=32 --num_epochs=3 "
        "--eval_ks=10").split()
ITEMS = [f"sku-{i:03d}" for i in range(120)]
COLD = ITEMS[100:]  # in the feature table only
TWINS = ("sku-118", "sku-119")  # cold, with the same features


def cli(module, *args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("features")
  rnd = random.Random(0)
  brand = {i: f"brand {k % 7}" for k, i in enumerate(ITEMS)}
  tags = {i: "|".join(sorted({f"t{(k * 3 + j) % 11}" for j in range(1 + k % 3)})) for k, i in enumerate(ITEMS)}
  tags[TWINS[1]], brand[TWINS[1]] = tags[TWINS[0]], brand[TWINS[0]]
  with open(root / "clicks.csv", "w") as f:
    f.write("user_id,item_id,ts\n")
    for u in range(300):
      t = 1_700_000_000 + u * 100
      for _ in range(rnd.randint(3, 12)):
        t += rnd.randint(1, 500)
        f.write(f"user {u},{rnd.choice(ITEMS[:100])},{t}\n")
  with open(root / "items.csv", "w") as f:
    f.write("item_id,brand,tags\n")
    for i in ITEMS:
      f.write(f'{i},"{brand[i]}",{tags[i]}\n')
  workdir = str(root / "wd")
  flags = [*TINY, f"--data_path={root}/clicks.csv", "--user_col=user_id", "--item_col=item_id", "--time_col=ts",
           f"--item_features={root}/items.csv", "--feature_item_col=item_id", f"--workdir={workdir}"]
  trained = cli("jaxrec.main", *flags)
  cli("jaxrec.main", *flags, "--mode=export")
  cli("jaxrec.recall", f"--embeddings={workdir}/embeddings.npz", "--top_n=30", f"--output={root}/recall.tsv")
  return root, workdir, trained.stderr


def test_training_says_what_the_table_matched(run):
  _, _, stderr = run
  assert ("120 items, 2 fields (brand, tags)" in stderr and
          "20 items only the table names (cold: added to the catalog), 0 clicked items without features" in stderr)


def test_export_has_every_item_and_flags_the_cold_ones(run):
  _, workdir, _ = run
  npz = np.load(os.path.join(workdir, "embeddings.npz"))
  assert sorted(npz["item_ids"].tolist()) == ITEMS
  assert sorted(npz["item_ids"][npz["cold_items"]].tolist()) == COLD
  row = {i: r for r, i in enumerate(npz["item_ids"])}
  # A cold item's vector is its features alone: equal features, equal vectors.
  np.testing.assert_array_equal(npz["item_emb"][row[TWINS[0]]], npz["item_emb"][row[TWINS[1]]])
  assert not np.array_equal(npz["item_emb"][row[COLD[0]]], npz["item_emb"][row[COLD[1]]])


def test_recall_may_recommend_cold_items_and_never_a_visited_one(run):
  root, workdir, _ = run
  npz = np.load(os.path.join(workdir, "embeddings.npz"))
  lists = dict(line.rstrip("\n").split("\t") for line in open(root / "recall.tsv"))
  visited = {}
  for line in open(root / "clicks.csv").readlines()[1:]:
    user, item, _ = line.strip().split(",")
    visited.setdefault(user, set()).add(item)
  assert len(lists) == 300
  assert all(not set(items.split(",")) & visited[user] for user, items in lists.items())
  assert any(set(items.split(",")) & set(COLD) for items in lists.values())
  # The lists are the top 30 by inner product, checked in float64 for one user.
  user = npz["user_ids"][0]
  scores = npz["item_emb"].astype(np.float64) @ npz["user_emb"][0].astype(np.float64)
  allowed = [k for k, i in enumerate(npz["item_ids"]) if i not in visited[user]]
  best = sorted(allowed, key=lambda k: -scores[k])[:30]
  got = [k for i in lists[user].split(",") for k in np.flatnonzero(npz["item_ids"] == i)]
  np.testing.assert_allclose(scores[got], scores[best], rtol=1e-5)


def test_serve_knows_cold_items_as_clicks_and_as_results(run):
  _, workdir, _ = run
  served = Served(f"--workdir={workdir}")
  try:
    with httpx.Client(base_url=served.url, timeout=60) as client:
      cold_click = client.post("/v1/recall", json={"clicks": [COLD[0], COLD[1]], "top_n": 120 - 2}).json()
      info = client.get("/v1/model").json()
  finally:
    code, stderr = served.stop()
  assert code == 0 and "Traceback" not in stderr, stderr
  assert info["items"] == 120
  assert cold_click["unknown_clicks"] == 0 and "fallback" not in cold_click  # a cold click is a known item
  assert set(cold_click["items"]) == set(ITEMS) - {COLD[0], COLD[1]}  # cold items are results too


def test_a_warm_start_grows_the_feature_tables_and_keeps_the_trained_rows(run):
  """Day 2: items 100-109 get clicks, 10 new items only the table names (a new brand and tag).
  At a learning rate of 1e-30 the run's tables stay as grafted, so the old rows must equal day
  1's bit for bit, and the new rows of every table come after them."""
  from jaxrec import checkpoints, item_features, vocab
  root, day1, _ = run
  rnd = random.Random(1)
  with open(root / "clicks2.csv", "w") as f:
    f.write(open(root / "clicks.csv").read())
    for u in range(300, 340):
      f.write("".join(f"user {u},{rnd.choice(ITEMS[100:110])},{1_800_000_000 + u * 10 + k}\n" for k in range(4)))
  new_items = [f"sku-{i:03d}" for i in range(120, 130)]
  with open(root / "items2.csv", "w") as f:
    f.write(open(root / "items.csv").read())
    f.writelines(f'{i},"brand new",t99|t1\n' for i in new_items)
  day2 = str(root / "day2")
  cli("jaxrec.main", *TINY, f"--data_path={root}/clicks2.csv", "--user_col=user_id", "--item_col=item_id",
      "--time_col=ts", f"--item_features={root}/items2.csv", "--feature_item_col=item_id", f"--workdir={day2}",
      f"--init_from={day1}", "--num_epochs=1", "--learning_rate=1e-30")
  ids1, ids2 = (vocab.load_item_vocab(vocab.path_in(w)) for w in (day1, day2))
  assert ids2[:len(ids1)].tolist() == ids1.tolist() and sorted(ids2[len(ids1):].tolist()) == new_items
  f1, f2 = (item_features.load(item_features.path_in(w)) for w in (day1, day2))
  assert f2.vocab[0][:len(f1.vocab[0])].tolist() == f1.vocab[0].tolist()
  assert f2.vocab[0][len(f1.vocab[0]):].tolist() == ["brand new"] and f2.vocab[1][len(f1.vocab[1]):].tolist() == ["t99"]
  warm = dict(zip(ids2.tolist(), f2.warm.tolist()))
  assert all(warm[i] for i in ITEMS[:110]) and not any(warm[i] for i in ITEMS[110:] + new_items)
  p1, p2 = ({k: np.asarray(v["embedding"]) for k, v in checkpoints.restore_params(mgr, mgr.latest_step()).items()
             if "embedding" in v and k != "position_embeddings"}
            for mgr in (checkpoints.manager(day1, checkpoints.BEST, writer=False),  # what --init_from takes
                        checkpoints.manager(day2, writer=False)))
  assert set(p1) == set(p2) == {"item_embeddings", "outputs_embedding", "feature_0", "feature_1",
                                "output_feature_0", "output_feature_1"}
  for name in p1:
    np.testing.assert_array_equal(p2[name][:len(p1[name])], p1[name])
    assert len(p2[name]) == len(p1[name]) + (10 if "embedding" in name else 1)  # 10 items, 1 new value a field


def test_a_warm_start_keeps_the_features_of_its_base(run, tmp_path):
  root, day1, _ = run
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-m", "jaxrec.main", *TINY, f"--data_path={root}/clicks.csv",
                           "--user_col=user_id", "--item_col=item_id", "--time_col=ts", f"--workdir={tmp_path}/day2",
                           f"--init_from={day1}"], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and result.stderr.splitlines() == [
      f"jaxrec: error: --init_from={day1}: its model has item features (brand, tags); a warm start keeps them: "
      "pass --item_features"], result.stderr
  assert not os.path.exists(tmp_path / "day2")
