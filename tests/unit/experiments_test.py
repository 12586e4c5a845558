"""Every experiment flagfile parses with jaxrec.main's flags and starts with its header."""

import glob
import os

import pytest
from absl import flags

from jaxrec import config_flags
from jaxrec.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
config_flags.define_flags(config_flags.MAIN_SECTIONS)  # the flags jaxrec.main parses
# The recipes a user starts from, and the ablations whose BENCHMARKS rows they reproduce.
FLAGFILES = sorted(glob.glob(os.path.join(REPO, "experiments", "*.flags")) +
                   glob.glob(os.path.join(REPO, "benchmarks", "experiments", "*.flags")))


def test_there_are_flagfiles():
  recipes = {os.path.basename(f) for f in glob.glob(os.path.join(REPO, "experiments", "*.flags"))}
  assert recipes == {"base.flags", "beauty.flags", "beauty_spec.flags", "beauty_inbatch.flags",
                     "beauty_bert4rec.flags", "sports.flags", "production.flags", "beauty_features.flags",
                     "sports_features.flags"}


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_parses_and_has_header(path, monkeypatch):
  monkeypatch.chdir(REPO)  # flagfiles name their includes relative to the repository root
  header = [line for line in open(path) if line.startswith("#")]
  for field in ("# Command:", "# Hardware:", "# Expect:"):
    assert any(line.startswith(field) for line in header), (path, field)
  assert f"--flagfile={os.path.relpath(path, REPO)}" in header[0]
  # Expands the flagfile and its includes into arguments; sets no flag.
  argv = flags.FLAGS.read_flags_from_files([f"--flagfile={os.path.relpath(path, REPO)}"], force_gnu=False)
  assert argv and all(a.startswith("--") for a in argv)
  names = {a[2:].split("=", 1)[0] for a in argv}
  unknown = {n for n in names if n not in flags.FLAGS and not (n.startswith("no") and n[2:] in flags.FLAGS)}
  assert not unknown, (path, unknown)
  assert os.path.basename(path) == "base.flags" or "--workdir=runs/" in " ".join(argv)


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_builds_a_consistent_configuration(path, monkeypatch):
  """Every flagfile passes the tree's checks (none sets a flag without effect)."""
  monkeypatch.chdir(REPO)
  fv = flags.FlagValues()
  config_flags.define_flags(config_flags.MAIN_SECTIONS, fv)
  # production.flags is for the user's own log: it names no data, so a forgotten --data_path
  # is refused rather than read from somewhere.
  data = ["--data_path=clicks.csv"] if os.path.basename(path) == "production.flags" else []
  fv(["jaxrec.main", f"--flagfile={os.path.relpath(path, REPO)}", *data])
  cfg = config_flags.from_flags(fv)
  cfg.check_runnable("train")


def test_the_production_recipe_needs_the_users_log_and_is_beauty_flags_model_on_every_click(monkeypatch):
  monkeypatch.chdir(REPO)
  def tree(*argv):
    fv = flags.FlagValues()
    config_flags.define_flags(config_flags.MAIN_SECTIONS, fv)
    fv(["jaxrec.main", *argv])
    return config_flags.from_flags(fv)
  production = tree("--flagfile=experiments/production.flags")
  with pytest.raises(InputError, match="--data_path: required"):
    production.check_runnable("train")
  beauty = tree("--flagfile=experiments/beauty.flags")
  assert production.model == beauty.model and production.loss == beauty.loss
  assert production.optimizer == beauty.optimizer and production.batching == beauty.batching
  assert production.data.holdout == "none" and production.eval.patience == 0
