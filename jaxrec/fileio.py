"""Atomic file writes: a reader never sees a half-written file."""

import contextlib
import os
import tempfile

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
  """Yields a temporary path in the same directory; renames it to `path` on success.

  On any exception the temporary file is removed and `path` is left untouched.
  `suffix` keeps an extension some writers insist on (numpy adds `.npz`).
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-",
                             suffix=suffix, dir=directory)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would have made it; mkstemp makes 0600
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
  """Like open(path, mode), but the file appears only once fully written."""
  with atomic_path(path) as tmp:
    with open(tmp, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
