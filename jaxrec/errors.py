"""User-facing errors: one line on stderr, no traceback.

Exit statuses: 2 bad input (flags, files, data); 1 training cannot go on (a non-finite
loss); 74 (EX_IOERR) the machine failed a write (disk full, permission denied,
read-only file system, a removed directory): nothing half-written is left, and once
the cause is cleared the same command resumes.
"""

import contextlib
import errno
import os
import signal
import sys

EXIT_USAGE = 2
EXIT_WRITE = 74

_CAUSES = ((errno.ENOSPC, "No space left on device", "no space left on device"),
           (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
           (errno.EROFS, "Read-only file system", "read-only file system"),
           (errno.EACCES, "Permission denied", "permission denied"),
           (errno.EPERM, "Operation not permitted", "permission denied"),
           (errno.ENOENT, "No such file or directory", "its directory was removed"))


class InputError(Exception):
  """Bad input data, flags or files. The message is one line naming the culprit."""


class TrainingError(Exception):
  """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


class WriteError(Exception):
  """A write failed for a reason of the machine; the message names the path, the cause and
  what is intact."""


def cause(e: BaseException) -> str:
  """The machine's reason behind `e` (or the exceptions it was raised from), in words."""
  known = known_cause(e)
  if known is not None:
    return known
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= 200 else text[:200] + "..."


def known_cause(e: BaseException) -> str | None:
  """cause(e) where it is a failure of the machine (a full disk, a denied write, ...), else None."""
  seen, chain = set(), [e]
  while chain:
    x = chain.pop(0)
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    for code, text, words in _CAUSES:
      if (isinstance(x, OSError) and x.errno == code) or text in str(x):
        return words
    if "RESOURCE_EXHAUSTED" in str(x):  # tensorstore's words (Orbax) for a full disk
      return "no space left on device"
    if str(x).startswith("NOT_FOUND") or "directory does not exist" in str(x):
      return "its directory was removed"
    if str(x).startswith("PERMISSION_DENIED"):
      return "permission denied"
    chain += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
  return None


@contextlib.contextmanager
def writing(what: str, intact: str = ""):
  """Turns an OSError inside into a WriteError: `<cause> writing <what>[; <intact>]`."""
  try:
    yield
  except OSError as e:
    raise WriteError(f"{cause(e)} writing {what}" + (f"; {intact}" if intact else "")) from None


@contextlib.contextmanager
def exit_on_input_error(prog: str):
  """Turns InputError into `prog: error: ...` and exit 2, TrainingError into exit 1, a failed
  write into exit 74, Ctrl-C into 130: each one line, then exit_now."""
  try:
    yield
  except InputError as e:
    fail(f"{prog}: error: {e}", EXIT_USAGE)
  except TrainingError as e:
    fail(f"{prog}: error: {e}", 1)
  except WriteError as e:
    fail(f"{prog}: error: {e}", EXIT_WRITE)
  except OSError as e:  # a file operation no module named: still one line, the path and the cause
    where = f": {e.filename}" if e.filename else ""
    fail(f"{prog}: error: {e.strerror or cause(e)}{where}", EXIT_WRITE)
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves first, see train.py)
    fail(f"{prog}: interrupted", 128 + signal.SIGINT)


def fail(line: str, status: int) -> None:
  print(line, file=sys.stderr)
  exit_now(status)


def exit_now(status: int) -> None:
  """Exits without the interpreter's teardown, once the run has closed what it wrote (the
  trainer closes its checkpoint managers and logs on the way out; outputs are written to a
  temporary file and renamed). With JAX, faiss, Arrow and Orbax's background threads alive,
  the teardown aborted the process after the error line (SIGABRT, "terminate called without
  an active exception") about one exit in twelve under load, or printed dozens of asyncio
  tracebacks ("Event loop is closed") from Orbax's threads: the one-line report and its exit
  status must be the last thing the process says."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def flags_parser(prog: str, help_text: str = ""):
  """An absl `flags_parser` for app.run: a bad flag is one stderr line and exit status 2;
  --help (or -h) prints `help_text`, the program's flags by section."""
  def parse(argv):
    from absl import flags
    if help_text and any(a in ("--help", "-h", "-help", "--helpshort") for a in argv[1:]):
      with contextlib.suppress(BrokenPipeError):  # e.g. piped into head
        print(help_text, flush=True)
      sys.exit(0)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      text = str(e)
      if text.startswith("flags ") and ": --" in text:  # a rule over several flags: its own words
        text = text[text.index(": --") + 2:]
      print(f"{prog}: error: {text}", file=sys.stderr)
      sys.exit(EXIT_USAGE)
  return parse
