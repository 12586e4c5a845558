"""Waiting on a condition with a deadline instead of a sleep: shared by unit and e2e tests."""

import time


def wait_for(predicate, deadline_s: float = 60.0, poll_s: float = 0.05) -> bool:
  """True once `predicate()` holds, polled every `poll_s`; False after `deadline_s`."""
  end = time.monotonic() + deadline_s
  while not predicate():
    if time.monotonic() > end:
      return False
    time.sleep(poll_s)
  return True
