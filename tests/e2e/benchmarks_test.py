"""Smoke test of the benchmark scripts at tiny sizes: they run and print their tables.

Nothing here checks a timing. BENCHMARKS.md and the plot go to a temporary directory.
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from main_test import write_sequences

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_module(*args) -> str:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc.stdout


def table_row(stdout: str, label: str) -> list:
  """The cells of the markdown row that starts with `label`."""
  for line in stdout.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and cells[0] == label:
      return cells[1:]
  raise AssertionError(f"no table row {label!r} in:\n{stdout}")


def test_train_bench_quick(tmp_path):
  """Every section in one run (the losses on the synthetic log, as the real one is missing)."""
  markdown, plot = tmp_path / "BENCHMARKS.md", tmp_path / "train.png"
  out = run_module("benchmarks.train_bench", "--quick", "--sections=real,sweeps,losses",
                   f"--loss_data_paths={tmp_path / 'missing.txt'}", f"--markdown_out={markdown}", f"--plot_out={plot}")
  for label in ("sequences/s", "ms/step", "ms/step, batches prebuilt", "start-up s (to end of step 1)",
                "first epoch s", "peak RSS MiB", "GFLOP/s done", "% of matmul ceiling",
                "useful % of matmul ceiling"):
    assert len(table_row(out, label)) == 6, label  # auto, auto without YNN, rows, plain, short_length, buckets
  assert table_row(out, "compilations after first epoch") == ["0"] * 6
  # The same training with and without YNNPACK's dots, and the exact layouts, agree to float32
  # rounding (accumulated over 4 epochs); buckets change the negatives.
  losses = [float(v) for v in table_row(out, "loss after 4 epochs (epoch 2 twice)")]
  np.testing.assert_allclose(losses[:5], losses[0], rtol=2e-3)
  for header in ("| batch size |", "| seq_length |", "| items |"):
    assert header in out
  losses_table = out[out.index("Each `--loss`"):]
  seq_per_s = table_row(losses_table, "sequences/s")
  assert len(seq_per_s) == 7 and all(float(v.replace(",", "")) > 0 for v in seq_per_s)
  assert len(table_row(losses_table, "compilations after first epoch")) == 7
  text = markdown.read_text()
  assert "<!-- train:begin -->" in text and "| sequences/s |" in text
  assert plot.exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_eval_bench_small(tmp_path):
  markdown = tmp_path / "BENCHMARKS.md"
  out = run_module("benchmarks.eval_bench", "--users=300", "--items=500", "--block_sizes=64,256",
                   f"--markdown_out={markdown}")
  assert len(table_row(out, "64")) == 5 and len(table_row(out, "256")) == 5
  assert len(table_row(out, "1-30 clicks")) == 6  # the model part
  assert len(table_row(out, "140 clicks (all at L=70)")) == 6
  assert "<!-- eval:begin -->" in markdown.read_text()


def test_accuracy_bench_tables_the_runs_it_made(tmp_path):
  """Two seeds of a tiny flagfile: the table's means and per-seed cells are those runs' test rows."""
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text("--data_format=synthetic\n--synthetic_users=300\n--synthetic_items=80\n--seq_length=10\n"
                      "--hidden_size=16\n--batch_size=64\n--num_epochs=2\n--learning_rate=0.01\n")
  markdown = tmp_path / "BENCHMARKS.md"
  root = tmp_path / "runs"
  records = f"--records={tmp_path / 'records'}"
  out = run_module("benchmarks.accuracy_bench", str(flagfile), "--seeds=0,1", f"--root={root}", records,
                   f"--markdown_out={markdown}", "--section_name=acc", "--plot_out=")
  tests = []
  for seed in (0, 1):
    with open(root / f"tiny_s{seed}" / "metrics.jsonl") as f:
      rows = [json.loads(line) for line in f]
    tests.append([r for r in rows if r["split"] == "test"][-1]["ndcg@10"])
  assert tests[0] != tests[1]  # the seeds really differ
  cells = table_row(out, "`tiny`")
  assert cells[0] == "2"
  assert float(cells[6]) == pytest.approx(sum(tests) / 2, abs=1e-4)  # test ndcg@10, the mean
  assert cells[-1] == ", ".join(f"{t:.4f}" for t in tests)
  assert "<!-- acc:begin -->" in markdown.read_text()
  assert float(cells[-2]) > 0  # minutes, from the runs' TensorBoard events
  metrics = (root / "tiny_s0" / "metrics.jsonl").read_text()
  again = run_module("benchmarks.accuracy_bench", str(flagfile), "--seeds=0,1", f"--root={root}", "--reuse",
                     records, "--markdown_out=", "--plot_out=")
  assert table_row(again, "`tiny`") == cells  # metrics and minutes read back...
  assert (root / "tiny_s0" / "metrics.jsonl").read_text() == metrics  # ...not retrained
  one = run_module("benchmarks.accuracy_bench", f"{flagfile}@1", f"--root={root}", "--reuse", records,
                   "--markdown_out=", "--plot_out=")
  assert table_row(one, "`tiny`")[0] == "1" and table_row(one, "`tiny`")[-1] == f"{tests[1]:.4f}"
  shutil.rmtree(root)  # workdirs are not committed; the records are
  plot = tmp_path / "valid.png"
  kept = run_module("benchmarks.accuracy_bench", f"{flagfile}@1", f"--root={root}", "--reuse", records,
                    "--markdown_out=", f"--plot_out={plot}")
  assert table_row(kept, "`tiny`") == table_row(one, "`tiny`")  # minutes included...
  assert not root.exists()  # ...read from the record, not retrained
  if importlib.util.find_spec("matplotlib"):  # the optional `bench` extra
    assert plot.stat().st_size > 0  # the validation curve comes back from the record too


def test_accuracy_bench_run_minutes_leaves_out_long_gaps(tmp_path):
  """Two sittings of a run, 80 minutes apart: its minutes are the gaps within each sitting."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import RecordWriter

  from benchmarks.accuracy_bench import run_minutes

  (tmp_path / "tensorboard").mkdir()
  for name, times in (("events.out.tfevents.1", [100, 160, 220]), ("events.out.tfevents.2", [5000, 5030])):
    writer = RecordWriter(str(tmp_path / "tensorboard" / name))
    for t in times:
      writer.write(event_pb2.Event(wall_time=t, step=1).SerializeToString())
    writer.close()
  with open(tmp_path / "tensorboard" / "events.out.tfevents.2", "ab") as f:
    f.write(b"\x40" + bytes(11))  # a record cut short by a killed writer: header only
  assert run_minutes(str(tmp_path), max_gap_minutes=10) == pytest.approx((60 + 60 + 30) / 60)
  assert run_minutes(str(tmp_path), max_gap_minutes=100) == pytest.approx((5030 - 100) / 60)
  assert math.isnan(run_minutes(str(tmp_path / "no_run"), max_gap_minutes=10))


def test_scale_bench_runs_every_stage_on_a_small_log(tmp_path):
  out = run_module("benchmarks.scale_bench", "--users=1500", f"--scratch={tmp_path}", "--update_md=false")
  stages = [line.split("|")[4].strip() for line in out.splitlines() if line.startswith("| 1,500 |")]
  assert stages == ["load", "train", "eval", "export", "recall_flat", "recall_ivf"]
  recalled = (tmp_path / "run_1500" / "flat.tsv").read_text().splitlines()
  assert len(recalled) == 1500 and all(len(line.split("\t")[1].split(",")) == 50 for line in recalled)


def tiny_run(root, num_epochs: int):
  """(click log, trained workdir) under `root`: a tiny model on a synthetic log of 300 users."""
  from jaxrec import click_log
  data = write_sequences(root / "log.txt", click_log.synthetic_click_log(300, 80, seed=0))
  workdir = root / "run"
  run_module("jaxrec.main", f"--data_path={data}", f"--workdir={workdir}", "--seq_length=10", "--hidden_size=16",
             "--batch_size=64", f"--num_epochs={num_epochs}", "--learning_rate=0.01")
  return data, workdir


def test_gap_bench_reproduces_the_runs_own_test_metrics(tmp_path):
  """Our protocol's row of the best checkpoint is the test row training wrote, and every
  variant and the selection-bias line are reported."""
  data, workdir = tiny_run(tmp_path, num_epochs=4)
  out = run_module("benchmarks.gap_bench", f"--workdir={workdir}", f"--data_path={data}")
  with open(workdir / "summary.json") as f:
    test = json.load(f)["test"]
  row = [line for line in out.splitlines() if line.startswith("| best |") and "| test | ours |" in line][0]
  assert row.split("|")[5].strip() == f"{test['ndcg@10']:.4f}" and row.split("|")[6].strip() == f"{test['hr@10']:.4f}"
  assert "the pick's optimism" in out and "| latest |" in out and "inputs cut to 50 clicks" in out


@pytest.fixture(scope="module")
def tiny_served_run(tmp_path_factory):
  """(click log, trained workdir) of a tiny synthetic model for the serving benchmark."""
  return tiny_run(tmp_path_factory.mktemp("serve"), num_epochs=1)


@pytest.mark.parametrize("load_generator", ["python", "wrk"])
def test_serve_bench_rows_and_targets(tmp_path, tiny_served_run, load_generator):
  """Every row answers without errors, the reload row included; targets without their rows
  say so. The wrk case runs only where wrk is installed: nothing else needs it."""
  if load_generator == "wrk" and not shutil.which("wrk"):
    pytest.skip("wrk is not installed (apt-get install -y wrk)")
  data, workdir = tiny_served_run
  markdown = tmp_path / "BENCHMARKS.md"
  out = run_module("benchmarks.serve_bench", f"--workdir={workdir}", f"--data_path={data}",
                   f"--load_generator={load_generator}", "--seconds=1", "--connections=1,8", "--reload_connections=8",
                   "--python_clients=8", "--bodies=200", "--top_n=10", f"--markdown_out={markdown}")
  header = "| client | batching | connections | served/s |"
  rows = [[c.strip() for c in line.strip("|").split("|")] for line in out[out.index(header):].splitlines()[2:]
          if line.startswith("|")]
  client = "wrk" if load_generator == "wrk" else "httpx (Python)"
  expected = [(client, "on", "1"), (client, "on", "8"), (client, "on, reload", "8")]
  expected += [("httpx (Python)", "on", "8")] if load_generator == "wrk" else []
  expected += [(client, "off", "1"), (client, "off", "8")]
  assert [(r[0], r[1].split(" (")[0], r[2]) for r in rows] == expected
  assert rows[2][1].startswith("on, reload (HTTP 200, ")
  for row in rows:
    assert float(row[3].replace(",", "")) > 0, row  # served/s
    assert row[7:10] == ["0", "0", "0"], row  # nothing shed, no other errors, no timeouts
  assert "not measured (--connections has no 64)" in out and "not measured (--connections has no 256)" in out
  assert "0 errors while the model reloads at 8 connections: reload HTTP 200" in out
  assert "0 answers not 200 or timed out, met" in out
  assert "<!-- serve:begin -->" in markdown.read_text()


def test_cold_bench_rows_and_an_independent_attribute_popularity(tmp_path):
  from jaxrec import click_log
  log = click_log.synthetic_click_log(300, 80, seed=0)
  data = write_sequences(tmp_path / "log.txt", log)
  attrs = {item: [f"g{k % 6}", f"h{k % 4}"] for k, item in enumerate(log.item_ids[1:].tolist())}
  (tmp_path / "attrs.txt").write_text("".join(f"{i} {' '.join(v)}\n" for i, v in attrs.items()))
  tiny = "--num_epochs=2,--hidden_size=16,--seq_length=10,--batch_size=64,--num_hidden_layers=1,--patience=0"
  out = run_module("benchmarks.cold_bench", f"--data_path={data}", f"--item_features={tmp_path}/attrs.txt",
                   f"--scratch={tmp_path}/scratch", f"--extra_flags={tiny}", "--markdown_out=")
  assert table_row(out, "id-only model")[:3] == ["0.0000", "0.0000", "0.0000"]  # cold items are not in its catalog
  for name in ("features model", "attribute popularity", "random (expected)"):
    assert len(table_row(out, name)) == 6
  # The baseline, naively: held-out items as the bench draws them; an item scores the training
  # clicks of every item sharing each of its values; ties rank the target last.
  # The held-out items: those of the log that the reduced log the models trained on lacks.
  reduced, = (tmp_path / "scratch").glob("clicks_without_*_items_seed0.txt")
  kept = {item for line in reduced.read_text().splitlines() for item in line.split()[1:]}
  held = np.array([False] + [item not in kept for item in log.item_ids[1:].tolist()])
  assert held.sum() == 8  # a tenth of the 80 items
  clicks = {}
  for k in range(len(log.items)):
    if not held[log.items[k]]:
      clicks[log.item_ids[log.items[k]]] = clicks.get(log.item_ids[log.items[k]], 0) + 1
  value_clicks = {}
  for item, values in attrs.items():
    for v in values:
      value_clicks[v] = value_clicks.get(v, 0) + clicks.get(item, 0)
  score = {item: sum(value_clicks[v] for v in values) for item, values in attrs.items()}
  held_ids = set(log.item_ids[held].tolist())
  hits = {True: [], False: []}
  for u in range(log.num_users):
    items = log.item_ids[log.items[log.indptr[u]:log.indptr[u + 1]]].tolist()
    history, target = set(items[:-1]), items[-1]
    rank = 0 if target in history else sum(score[i] >= score[target] for i in attrs if i != target and i not in history)
    hits[target in held_ids].append(target not in history and rank < 50)
  row = table_row(out, "attribute popularity")
  assert row[1] == f"{np.mean(hits[True]):.4f}" and row[4] == f"{np.mean(hits[False]):.4f}"


def test_train_bench_whole_processes(tmp_path):
  """The command line timed as a user times it: the rows and their arithmetic (no timing checked)."""
  out = run_module("benchmarks.train_bench", "--quick", "--sections=whole", "--whole_epochs=3",
                   f"--data_path={tmp_path / 'missing.txt'}", "--markdown_out=")
  for name in ("default", "--layout=plain"):
    one, three, epoch, sequences, rate, startup, _ = table_row(out, name)
    one, three, epoch, startup = map(float, (one, three, epoch, startup))
    assert abs(epoch - (three - one) / 2) <= 0.06 and abs(startup - (one - epoch)) <= 0.11  # shown rounded
    sequences, rate = int(sequences.replace(",", "")), float(rate.replace(",", ""))
    # sequences/s is an epoch's sequences over its time (shown to 0.01 s; at these sizes it may be
    # noise around 0, even negative).
    assert sequences > 0 and abs(rate * epoch - sequences) <= 0.005 * abs(rate) + 0.01 * sequences + 1
