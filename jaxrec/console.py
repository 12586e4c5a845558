"""Progress lines on stderr, apart from the libraries' absl logging (which main quiets)."""

import sys
import time


def info(message: str, *args) -> None:
  print(time.strftime("%H:%M:%S ") + (message % args if args else message), file=sys.stderr, flush=True)
