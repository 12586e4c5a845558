"""Every experiment flagfile parses with jaxrec.main's flags and starts with its header."""

import glob
import os

import pytest
from absl import flags

from jaxrec import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
config_flags.define_flags(config_flags.MAIN_SECTIONS)  # the flags jaxrec.main parses
FLAGFILES = sorted(glob.glob(os.path.join(REPO, "experiments", "*.flags")))


def test_there_are_flagfiles():
  assert {"base.flags", "beauty.flags", "beauty_bert4rec.flags"} <= {os.path.basename(f) for f in FLAGFILES}


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_parses_and_has_header(path, monkeypatch):
  monkeypatch.chdir(REPO)  # flagfiles name their includes relative to the repository root
  header = [line for line in open(path) if line.startswith("#")]
  for field in ("# Command:", "# Hardware:", "# Expect:"):
    assert any(line.startswith(field) for line in header), (path, field)
  assert f"--flagfile=experiments/{os.path.basename(path)}" in header[0]
  # Expands the flagfile and its includes into arguments; sets no flag.
  argv = flags.FLAGS.read_flags_from_files([f"--flagfile={os.path.relpath(path, REPO)}"], force_gnu=False)
  assert argv and all(a.startswith("--") for a in argv)
  names = {a[2:].split("=", 1)[0] for a in argv}
  unknown = {n for n in names if n not in flags.FLAGS and not (n.startswith("no") and n[2:] in flags.FLAGS)}
  assert not unknown, (path, unknown)
  assert os.path.basename(path) == "base.flags" or "--workdir=runs/" in " ".join(argv)
