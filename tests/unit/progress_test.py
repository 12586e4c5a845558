"""Progress from the first second: every phase of a training run says so, a slow phase is
announced while it runs, and a progress line comes at least every PROGRESS_EVERY_S whatever
--log_every_steps says (a 300k-click log once trained 3 minutes before its first line)."""

import re
import time

from jaxrec import api
from jaxrec import config
from jaxrec import console
from jaxrec import train

from api_test import write_clicks
from deadlines import wait_for


def test_a_slow_phase_is_announced_while_it_runs_and_a_quick_one_is_not(monkeypatch):
  printed = []
  monkeypatch.setattr(console, "info", lambda message, *args: printed.append(message % args if args else message))
  with console.slow("reading big.csv", after_s=0.05):
    assert wait_for(lambda: printed, deadline_s=30, poll_s=0.01), "the slow phase never said so"
  with console.slow("reading small.csv", after_s=30):
    pass
  time.sleep(0.1)  # a timer left running would print here
  assert printed == ["reading big.csv ..."]


def test_training_says_each_phase_and_prints_on_time_not_only_every_n_steps(tmp_path, capsys, monkeypatch):
  write_clicks(tmp_path / "clicks.csv")
  cfg = config.make(data_path=str(tmp_path / "clicks.csv"), time_col="ts", workdir=str(tmp_path / "run"),
                    hidden_size=16, num_hidden_layers=1, seq_length=8, batch_size=16, num_epochs=2,
                    log_every_steps=100000, checkpoint_every_steps=100000, eval_ks=[10])
  monkeypatch.setattr(train, "PROGRESS_EVERY_S", 0)  # every step is "a minute later"
  api.train(cfg)
  err = capsys.readouterr().err
  phases = [r"read \d+ clicks of 120 users on 40 items from .*clicks.csv in \d+\.\d s",
            r"\d+ training clicks of 120 users, 120 validation and 120 test targets held out",
            r"\d+ training sequences, \d+ steps/epoch x 2 epochs", r"batch layout ", r"compiling the train step",
            r"first step done \d+\.\d s after compiling began; progress every 100000 steps or 0 s"]
  at = 0
  for phase in phases:
    match = re.compile(phase).search(err, at)
    assert match, f"{phase!r} missing (or out of order) in:\n{err}"
    at = match.end()
  total = 2 * int(re.search(r"(\d+) steps/epoch x 2 epochs", err).group(1))
  steps = [int(s) for s in re.findall(rf"epoch \d step (\d+)/{total} ", err)]
  # Every step from the second on prints (the first has no rate yet), once each.
  assert steps == list(range(2, total + 1)), err
