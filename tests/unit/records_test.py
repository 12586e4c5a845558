"""README's results table, recomputed from the committed accuracy records
(benchmarks/accuracy_runs/NAME_sSEED.json, written by benchmarks.accuracy_bench)."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
from absl import flags

from jaxrec import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDS = os.path.join(REPO, "benchmarks", "accuracy_runs")
# A row's runs were made under another flagfile name where its record says so: that flagfile
# must configure exactly the same run (the workdir aside), which test_record_aliases checks.
RAN_AS = {"experiments/beauty_bert4rec.flags": "benchmarks/experiments/beauty_bert4rec_smooth03.flags"}
# Rows whose seeds lack a record, or whose record was rebuilt from a table rather than written by
# its run: README must say "record pending" in them; each leaves this set once its runs land
# (test_pending_rows_still_lack_records fails until it does).
PENDING = {"experiments/beauty_spec.flags", "experiments/beauty_bert4rec.flags"}


def results_rows() -> list:
  """(flagfile, seeds, ndcg@10, hr@10, first cell) of each row of README's results table."""
  text = open(os.path.join(REPO, "README.md")).read()
  header = re.search(r"^\| .*full ranking, test \(mean of 3 seeds unless the row says\).*$", text, re.M)
  assert header, "README's results table is missing or its header changed"
  rows = []
  for line in text[header.end():].lstrip("\n").splitlines()[1:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    flagfile = re.match(r"`([^`]+\.flags)`", cells[0]).group(1)
    said = re.search(r"\bseeds? ([\d, ]+)\)", cells[0])
    seeds = [int(s) for s in said.group(1).split(",")] if said else [0, 1, 2]
    rows.append((flagfile, seeds, cells[1], cells[2], cells[0]))
  return rows


def records_of(flagfile: str, seeds: list) -> list:
  """The records of `seeds`, None for a seed that has none."""
  name = record_name(flagfile)
  paths = [os.path.join(RECORDS, f"{name}_s{s}.json") for s in seeds]
  return [json.load(open(p)) if os.path.exists(p) else None for p in paths]


def complete(records: list) -> bool:
  return all(r is not None and "rebuilt" not in r.get("note", "") for r in records)


def record_name(flagfile: str) -> str:
  return os.path.splitext(os.path.basename(RAN_AS.get(flagfile, flagfile)))[0]


def test_the_table_has_its_rows():
  assert [r[0] for r in results_rows()] == [
      "experiments/beauty.flags", "experiments/beauty_spec.flags", "experiments/beauty_inbatch.flags",
      "experiments/beauty_bert4rec.flags", "experiments/sports.flags"]


@pytest.mark.parametrize("flagfile, seeds, ndcg, hr, label", results_rows(), ids=lambda v: str(v)[:40])
def test_readme_results_are_the_means_of_their_records(flagfile, seeds, ndcg, hr, label):
  if flagfile in PENDING:
    assert "record pending" in label, f"{flagfile}: its row must say that its records are pending"
    return
  records = records_of(flagfile, seeds)
  assert complete(records), f"{flagfile}: seeds {seeds} need records written by their runs"
  name = record_name(flagfile)
  assert all(r["name"] == name and r["seed"] == s for r, s in zip(records, seeds))
  # Each cell shows the mean to 4 decimals.
  for cell, key in ((ndcg, "ndcg@10"), (hr, "hr@10")):
    mean = float(np.mean([r["test"][key] for r in records]))
    assert cell == f"{mean:.4f}", f"{flagfile} {key}: README {cell}, records {mean:.5f}"


@pytest.mark.parametrize("flagfile", sorted(PENDING))
def test_pending_rows_still_lack_records(flagfile):
  seeds = next(r[1] for r in results_rows() if r[0] == flagfile)
  assert not complete(records_of(flagfile, seeds)), f"{flagfile}: its records are complete: compute its row from them"


@pytest.mark.parametrize("flagfile, ran_as", sorted(RAN_AS.items()))
def test_record_aliases_configure_the_same_run(flagfile, ran_as, monkeypatch):
  monkeypatch.chdir(REPO)  # flagfiles name their includes relative to the repository root

  def tree(path):
    fv = flags.FlagValues()
    config_flags.define_flags(config_flags.MAIN_SECTIONS, fv)
    fv(["jaxrec.main", f"--flagfile={path}"])
    cfg = config_flags.from_flags(fv)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, workdir=""))

  assert tree(flagfile) == tree(ran_as)
