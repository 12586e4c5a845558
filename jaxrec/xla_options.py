"""XLA options that must be set before JAX starts its backend (read from XLA_FLAGS then).

YNNPACK dots: from jaxlib 0.10.2 XLA:CPU can hand its dot fusions to the YNNPACK library,
which runs the training step's many small dots (the packed encoder, the lbm levels) about
1.7x faster (the whole packed step) than XLA's own dot emitter on x86 (BENCHMARKS.md, "Training throughput,
layouts"). The dots are the same float32 products summed in another order, so results
move only at float32 rounding. Only dots: handing elementwise or reduce fusions to it as
well measured slower. The flag is experimental; it is applied only to jaxlib versions it
was verified on, since XLA aborts the process on a flag it does not know.
"""

import os

YNN_DOTS = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
_YNN_FLAG = YNN_DOTS.split("=")[0]
_YNN_VERIFIED = ((0, 10, 2), (0, 11, 0))  # [first, last) jaxlib versions checked


def _jaxlib_version() -> tuple:
  from importlib import metadata
  try:
    return tuple(int(part) for part in metadata.version("jaxlib").split(".")[:3])
  except (metadata.PackageNotFoundError, ValueError):
    return ()


def use_ynn_dots(enable: bool = True) -> bool:
  """Appends YNN_DOTS to XLA_FLAGS where jaxlib supports it; returns whether they are on.

  Call before the first JAX computation. XLA_FLAGS that already name the option win, so a
  user can set it either way by hand.
  """
  current = os.environ.get("XLA_FLAGS", "")
  if _YNN_FLAG in current:
    return YNN_DOTS in current.split()
  low, high = _YNN_VERIFIED
  if not enable or not low <= _jaxlib_version() < high:
    return False
  os.environ["XLA_FLAGS"] = f"{current} {YNN_DOTS}".strip()
  return True
