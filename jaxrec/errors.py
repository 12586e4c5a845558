"""User-facing errors: one line on stderr, no traceback; exit 2 for bad input, 1 for failed training."""

import contextlib
import signal
import sys

EXIT_USAGE = 2


class InputError(Exception):
  """Bad input data, flags or files. The message is one line naming the culprit."""


class TrainingError(Exception):
  """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


@contextlib.contextmanager
def exit_on_input_error(prog: str):
  """Turns InputError into `prog: error: ...` and exit 2, TrainingError into exit 1, Ctrl-C into 130."""
  try:
    yield
  except InputError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  except TrainingError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves first, see train.py)
    print(f"{prog}: interrupted", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


def flags_parser(prog: str):
  """An absl `flags_parser` for app.run: a bad flag is one stderr line and exit status 2."""
  def parse(argv):
    from absl import flags
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      text = str(e)
      if text.startswith("flags ") and ": --" in text:  # a rule over several flags: its own words
        text = text[text.index(": --") + 2:]
      print(f"{prog}: error: {text}", file=sys.stderr)
      sys.exit(EXIT_USAGE)
  return parse
