"""Shared benchmark plumbing: ceilings measured in the same run, table output, BENCHMARKS.md sections."""

import os
import platform
import re
import resource
import shlex
import sys
import time

import numpy as np

BENCHMARKS_MD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")


def numpy_matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
  """FLOP/s ceiling of a large float32 matmul through numpy/BLAS, in GFLOP/s (best of repeats)."""
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
  a @ b
  best = min(_timed(lambda: a @ b) for _ in range(repeats))
  return 2 * n**3 / best / 1e9


def jax_matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
  """FLOP/s ceiling of a large float32 matmul through XLA, in GFLOP/s (best of repeats)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
  return 2 * n**3 / best / 1e9


def copy_gbytes_per_s(nbytes: int = 1 << 28, repeats: int = 3) -> float:
  """Memory bandwidth ceiling: a large numpy array copy (read + write), in GB/s."""
  src = np.ones(nbytes // 4, np.float32)
  dst = np.empty_like(src)
  best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
  return 2 * nbytes / best / 1e9


def jax_copy_gbytes_per_s(nbytes: int = 1 << 30, repeats: int = 3) -> float:
  """Memory bandwidth ceiling of the default device: a jitted array copy (read + write), in GB/s."""
  import jax
  import jax.numpy as jnp
  x = jnp.ones(nbytes // 4, jnp.float32)
  f = jax.jit(lambda v: v * 1.0001)
  f(x).block_until_ready()
  best = min(_timed(lambda: f(x).block_until_ready()) for _ in range(repeats))
  return 2 * nbytes / best / 1e9


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def peak_rss_mib(children: bool = False) -> float:
  """Peak resident memory of this process (or of its finished children), in MiB."""
  who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
  return resource.getrusage(who).ru_maxrss / 1024


def markdown_table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def machine_line() -> str:
  return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def update_section(name: str, body: str, path: str = "") -> None:
  """Replaces (or appends) the section `name` of `path` (BENCHMARKS.md), keeping the others."""
  path = path or BENCHMARKS_MD
  begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
  block = f"{begin}\n{body.strip()}\n{end}"
  text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
  text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
  with open(path, "w") as f:
    f.write(text)


def command_line(module: str) -> str:
  """The exact command that reproduces this run, e.g. `python -m benchmarks.recall_bench --users 20000`."""
  return "python -m " + shlex.join([module] + sys.argv[1:])
