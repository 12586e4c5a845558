"""Progress lines on stderr, apart from the libraries' absl logging (which main quiets)."""

import contextlib
import sys
import threading
import time

SLOW_AFTER_S = 5.0  # a phase still running after this says so (slow)


def is_main_process() -> bool:
  """False on every process but the first of a multi-process JAX run."""
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


def info(message: str, *args) -> None:
  if is_main_process():
    print(time.strftime("%H:%M:%S ") + (message % args if args else message), file=sys.stderr, flush=True)


def every_process(message: str, *args) -> None:
  """A line from each process of a multi-process run, prefixed with its index."""
  jax = sys.modules.get("jax")
  who = f"process {jax.process_index()}/{jax.process_count()} " if jax is not None else ""
  print(time.strftime("%H:%M:%S ") + who + (message % args if args else message), file=sys.stderr, flush=True)


@contextlib.contextmanager
def slow(message: str, after_s: float | None = None):
  """Says `message` once if the block is still running after `after_s` seconds.

  Quick phases stay silent, so bad input still ends with its one error line; a long one
  (a large log being read, a large batch plan) is announced instead of running silent.
  """
  timer = threading.Timer(SLOW_AFTER_S if after_s is None else after_s, info, (message + " ...",))
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()
