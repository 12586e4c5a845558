"""Smoke test of the benchmark scripts at tiny sizes: they run and print their tables.

Nothing here checks a timing. BENCHMARKS.md and the plot go to a temporary directory.
"""

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  markdown, plot = tmp_path / "BENCHMARKS.md", tmp_path / "train.png"
  out = run_module("benchmarks.train_bench", "--quick", f"--markdown_out={markdown}", f"--plot_out={plot}")
  for label in ("sequences/s", "ms/step", "ms/step, batches prebuilt", "start-up s (to end of step 1)",
                "first epoch s", "peak RSS MiB", "GFLOP/s done", "% of matmul ceiling",
                "useful % of matmul ceiling"):
    assert len(table_row(out, label)) == 4, label  # plain, short_length, buckets, buckets + feed-forward
  assert table_row(out, "compilations after first epoch") == ["0"] * 4
  for header in ("| batch size |", "| seq_length |", "| items |"):
    assert header in out
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
