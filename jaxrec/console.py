"""Progress lines on stderr, apart from the libraries' absl logging (which main quiets)."""

import sys
import time


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
