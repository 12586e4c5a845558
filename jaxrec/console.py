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
