r"""jaxrec command line: train, evaluate or export the seq2seq recall model.

  python -m jaxrec.main --flagfile=experiments/base.flags              # train (resumes)
  python -m jaxrec.main --flagfile=experiments/base.flags --mode=eval  # evaluate a checkpoint
  python -m jaxrec.main --flagfile=experiments/base.flags --mode=export
  python -m jaxrec.main --help                                         # every flag, by section

Flags are generated from the configuration tree (config.py); this module parses them into a
Config and calls the Python API (api.py). Bad flags or input exit with status 2 and one line
on stderr; a failed write exits 74, a preempted run 128 + the signal.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax

from jaxrec import api
from jaxrec import config_flags
from jaxrec import console
from jaxrec import errors
from jaxrec import train
from jaxrec import xla_options
from jaxrec.errors import InputError, exit_on_input_error, flags_parser

PROG = "jaxrec"
FLAGS = flags.FLAGS


def main(argv) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need --)")
  cfg = config_flags.from_flags(FLAGS)
  xla_options.use_ynn_dots(cfg.batching.ynn_dots)  # before the backend starts
  if cfg.run.num_processes > 1:
    jax.distributed.initialize(cfg.run.coordinator_address, cfg.run.num_processes, cfg.run.process_id)
  mode = cfg.run.mode
  if mode == "inspect":
    print(api.inspect(cfg))
  elif mode == "train":
    try:
      api.train(cfg)
    except train.Preempted as e:  # the checkpoint is saved and the managers closed
      errors.fail(f"{PROG}: {e}", e.exit_code)
    finished(cfg)
  elif mode == "eval":
    api.evaluate(cfg)
  elif mode == "export":
    api.export(cfg)
  else:
    api.export_model(cfg)


def finished(cfg) -> None:
  """The closing line of a training run: where its results are and what comes next."""
  if not console.is_main_process():
    return
  with open(os.path.join(cfg.run.workdir, "summary.json")) as f:
    summary = json.load(f)
  chosen = (f"best checkpoint, step {summary['best']['step']}" if summary["best"]["step"] is not None
            else f"latest checkpoint, step {summary['final_step']}")
  console.info("finished: %s; export and serve take its %s (next: the same flags with --mode=export%s)",
               os.path.join(cfg.run.workdir, "summary.json"), chosen,
               "" if cfg.run.publish else ", or --publish=LINK to serve it")


def run() -> None:
  config_flags.define_flags(config_flags.MAIN_SECTIONS)

  def guarded(argv):
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and JAX are chatty at INFO
    with exit_on_input_error(PROG):
      main(argv)
  app.run(guarded, flags_parser=flags_parser(PROG, config_flags.help_text(config_flags.MAIN_SECTIONS,
                                                                          "jaxrec.main")))


if __name__ == "__main__":
  run()
