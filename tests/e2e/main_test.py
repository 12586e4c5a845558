"""The command line as a scheduled pipeline uses it: vocabulary integrity, runs that carry their
flags, production splits and selection, and what a scheduler reads (summary.json, _SUCCESS).

Every case runs the real CLI in a subprocess on tiny models and small generated logs.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxrec import click_log
from jaxrec import clicks
from jaxrec import xla_options

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--hidden_size=16 --num_hidden_layers=1 --seq_length=10 --batch_size=32 --num_epochs=3 "
        "--checkpoint_every_steps=1000 --eval_ks=10,20").split()


def cli(*args, module="jaxrec.main") -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                        timeout=300)


def ok(*args, module="jaxrec.main") -> subprocess.CompletedProcess:
  result = cli(*args, module=module)
  assert result.returncode == 0, result.stderr
  return result


def refused(*args) -> str:
  result = cli(*args)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxrec: error: "), result.stderr
  return lines[0]


def write_sequences(path, log: clicks.ClickLog, rename=lambda item: item) -> str:
  with open(path, "w") as f:
    for u in range(log.num_users):
      items = [rename(i) for i in log.item_ids[log.items[log.indptr[u]:log.indptr[u + 1]]]]
      f.write(" ".join([log.user_ids[u], *items]) + "\n")
  return str(path)


def rows(workdir, split=None) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    out = [json.loads(line) for line in f]
  return [r for r in out if split is None or r["split"] == split]


LOG = click_log.synthetic_click_log(300, 100, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(data file, workdir) of a 3-epoch tiny model with validation."""
  root = tmp_path_factory.mktemp("trained")
  data = write_sequences(root / "clicks.txt", LOG)
  workdir = str(root / "workdir")
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}")
  return data, workdir


def test_renamed_ids_of_the_same_count_are_never_read_under_the_wrong_rows(trained, tmp_path):
  data, workdir = trained
  # Every item renamed: the count is unchanged, but no row of the model belongs to them.
  renamed = write_sequences(tmp_path / "renamed.txt", LOG, rename=lambda i: "new" + i)
  for mode in ("export", "eval"):
    line = refused(*TINY, f"--data_path={renamed}", f"--workdir={workdir}", f"--mode={mode}",
                   f"--output={tmp_path}/e.npz")
    assert "none of its 100 items is an item of the model" in line
  assert not os.path.exists(tmp_path / "e.npz")
  # Resuming training on it is refused with the counts and the way forward.
  line = refused(*TINY, f"--data_path={renamed}", f"--workdir={workdir}")
  assert "100 new, 100 missing" in line and f"--init_from={workdir}" in line
  # Ten items renamed: their clicks are skipped and counted; every other row keeps its id.
  changed = set(LOG.item_ids[1:11])
  partial = write_sequences(tmp_path / "partial.txt", LOG, rename=lambda i: "new" + i if i in changed else i)
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--mode=export", f"--output={tmp_path}/a.npz")
  result = ok(*TINY, f"--data_path={partial}", f"--workdir={workdir}", "--mode=export",
              f"--output={tmp_path}/b.npz")
  per_user = [LOG.items[LOG.indptr[u]:LOG.indptr[u + 1]] for u in range(LOG.num_users)]
  skipped = sum(int(np.isin(items, np.arange(1, 11)).sum()) for items in per_user)
  assert f"skipped {skipped} clicks on 10 items the model does not know" in result.stderr
  a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
  np.testing.assert_array_equal(a["item_ids"], b["item_ids"])  # the model's catalog, not the log's
  np.testing.assert_array_equal(a["item_emb"], b["item_emb"])
  untouched = [u for u, items in enumerate(per_user) if not np.isin(items, np.arange(1, 11)).any()]
  row_a, row_b = ({user: r for r, user in enumerate(x["user_ids"])} for x in (a, b))
  for user in LOG.user_ids[untouched]:
    np.testing.assert_array_equal(a["user_emb"][row_a[user]], b["user_emb"][row_b[user]])


def test_a_rerun_with_other_training_flags_is_refused_unless_allowed(trained, tmp_path):
  data, src = trained
  workdir = str(tmp_path / "wd")
  shutil.copytree(src, workdir)
  before = open(os.path.join(workdir, "train_config.json")).read()
  line = refused(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--learning_rate=0.01", "--seed=3")
  assert "--learning_rate 0.001 there, 0.01 now; --seed 0 there, 3 now" in line
  assert "--allow_changed_flags=learning_rate,seed" in line
  assert open(os.path.join(workdir, "train_config.json")).read() == before
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--num_epochs=4", "--allow_changed_flags=num_epochs")
  assert json.load(open(os.path.join(workdir, "train_config.json")))["num_epochs"] == 4
  assert max(r["epoch"] for r in rows(workdir, "train")) == 4


def test_summary_success_marker_run_ids_and_export_metadata(trained, tmp_path):
  data, workdir = trained
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert open(os.path.join(workdir, "_SUCCESS")).read().strip() == summary["run_id"]
  assert summary["flags"]["hidden_size"] == 16 and summary["flags"]["num_epochs"] == 3
  assert summary["data"] == {"path": os.path.abspath(data), "bytes": os.path.getsize(data), "format": "auto",
                             "user_col": "user", "item_col": "item", "time_col": "", "nulls": "refuse",
                             "clicks": len(LOG.items), "users": LOG.num_users, "items": LOG.num_items - 1}
  assert set(summary["versions"]) == {"jaxrec", "jax", "flax", "xla_flags"}
  assert xla_options.YNN_DOTS in summary["versions"]["xla_flags"].split()  # the default, inherited
  valid = rows(workdir, "valid")
  best = max(valid, key=lambda r: r["ndcg@10"])
  assert summary["best"]["step"] == best["step"] and summary["best"]["valid"]["ndcg@10"] == best["ndcg@10"]
  assert summary["test"]["ndcg@10"] == rows(workdir, "test")[-1]["ndcg@10"]
  assert all(r["run_id"] == summary["run_id"] and r["time"] > 0 for r in rows(workdir))
  # Export defaults to the checkpoint training selected, and says which.
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--mode=export", f"--output={tmp_path}/e.npz")
  npz = np.load(tmp_path / "e.npz")
  assert int(npz["step"]) == best["step"]
  assert json.loads(str(npz["model_config"]))["hidden_size"] == 16
  assert str(npz["vocab_fingerprint"]) == summary["vocab_fingerprint"]


def test_a_resumed_run_marks_the_steps_it_repeats(trained, tmp_path):
  data, src = trained
  workdir = str(tmp_path / "wd")
  shutil.copytree(src, workdir)
  os.remove(os.path.join(workdir, "_SUCCESS"))
  ckpt = os.path.join(workdir, "checkpoints")
  last = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
  shutil.rmtree(os.path.join(ckpt, str(last)))  # as if killed before the last epoch's checkpoint
  first_id = json.load(open(os.path.join(workdir, "summary.json")))["run_id"]
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}")
  second = [r for r in rows(workdir) if r["run_id"] != first_id]
  assert second and all(r.get("repeated") for r in second if r["split"] == "train")
  assert [r["epoch"] for r in second if r["split"] == "train"] == [3]
  assert os.path.exists(os.path.join(workdir, "_SUCCESS"))


def test_holdout_none_trains_on_every_click_and_validates_nothing(tmp_path):
  data = write_sequences(tmp_path / "clicks.txt", LOG)
  workdir = str(tmp_path / "wd")
  result = ok(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--holdout=none")
  # Every user with 2+ clicks trains; nobody is held out (leave-one-out would keep 2 of each).
  assert f"{int((LOG.lengths() >= 2).sum())} training sequences" in result.stderr
  assert not rows(workdir, "valid") and not rows(workdir, "test")
  assert not os.path.exists(os.path.join(workdir, "best")) or not os.listdir(os.path.join(workdir, "best"))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["test"] == {} and summary["best"]["step"] is None and summary["final_step"] > 0
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--holdout=none", "--mode=export")
  assert int(np.load(os.path.join(workdir, "embeddings.npz"))["step"]) == summary["final_step"]
  assert "needs validation" in refused(*TINY, f"--data_path={data}", f"--workdir={tmp_path}/x",
                                       "--holdout=none", "--patience=2")


def test_time_split_holds_out_clicks_after_global_timestamps(tmp_path):
  import datetime
  day0, rng = datetime.date(2024, 1, 1), np.random.default_rng(0)
  lines, days = ["user,item,ts"], []
  for u in range(LOG.num_users):
    clicks = LOG.items[LOG.indptr[u]:LOG.indptr[u + 1]]
    days.append(int(rng.integers(0, 40)) + 3 * np.arange(len(clicks)))
    for day, item in zip(days[-1], clicks):
      lines.append(f"{LOG.user_ids[u]},{LOG.item_ids[item]},{day0 + datetime.timedelta(int(day))}T08:00:00Z")
  data = tmp_path / "clicks.csv"
  data.write_text("\n".join(lines) + "\n")
  valid_from, test_from = "2024-02-10", "2024-03-01"
  v, t = ((datetime.date.fromisoformat(x) - day0).days for x in (valid_from, test_from))
  workdir = str(tmp_path / "wd")
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--split=time", f"--valid_from={valid_from}",
     f"--test_from={test_from}", "--time_col=ts")
  # A user is evaluated where the period holds one of their clicks and an earlier click exists.
  expect_valid = sum(bool(((d >= v) & (d < t)).any()) and d[0] < v for d in days)
  expect_test = sum(bool((d >= t).any()) and d[0] < t for d in days)
  assert {r["count"] for r in rows(workdir, "valid")} == {expect_valid}
  assert rows(workdir, "test")[-1]["count"] == expect_test
  line = refused(*TINY, f"--data_path={data}", f"--workdir={tmp_path}/x", "--split=time",
                 "--valid_from=soon", f"--test_from={test_from}", "--time_col=ts")
  assert "--valid_from=soon: --split=time needs a number or an ISO-8601 date/time" in line


def test_select_metric_picks_the_best_checkpoint_and_drives_patience(tmp_path):
  data = write_sequences(tmp_path / "clicks.txt", LOG)
  workdir = str(tmp_path / "wd")
  ok(*TINY, f"--data_path={data}", f"--workdir={workdir}", "--select_metric=hr@20", "--num_epochs=6",
     "--learning_rate=0.02", "--patience=2")
  valid = rows(workdir, "valid")
  best = max(valid, key=lambda r: r["hr@20"])  # first of the maximal: a tie is not an improvement
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["best"]["step"] == best["step"] and summary["best"]["select_metric"] == "hr@20"
  later = [r for r in valid if r["epoch"] > best["epoch"]]
  assert len(later) == min(2, 6 - best["epoch"])  # patience 2: stops two validations after the best
  assert "--select_metric=hr@50: expected mrr, or hr@K or ndcg@K with K in --eval_ks=10,20" in refused(
      *TINY, f"--data_path={data}", f"--workdir={tmp_path}/x", "--select_metric=hr@50")


def test_readme_flag_tables_are_the_generated_ones():
  from jaxrec import config_flags
  readme = open(os.path.join(REPO, "README.md")).read()
  begin, end = "<!-- flags:begin -->\n", "\n<!-- flags:end -->"
  assert readme[readme.index(begin) + len(begin):readme.index(end)] == config_flags.readme_tables()
