"""Fixtures shared by the tests: fast compiles and a compilation cache for their jaxrec
processes, and the tests of exported arrays (recall, embeddings).

tests/unit run in-process (seconds each); tests/e2e start real processes (the CLI, servers,
crashes, several hosts) and are marked `e2e`, as are the few process-starting tests kept
beside their module's unit tests: `pytest -m "not e2e"` is the quick loop."""

import os

import numpy as np
import pytest

from jaxrec import xla_options

# The tests compile hundreds of tiny programs and run each for a few steps, so compiling is
# most of their time: XLA's CPU backend at optimization level 0 compiles them about twice as
# fast. Set before jax starts its backend; the jaxrec processes the tests start inherit it
# (tests that set their own XLA_FLAGS append to it).
# The in-process tests run the dots jaxrec.main runs by default (xla_options.YNN_DOTS).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
xla_options.use_ynn_dots()


def pytest_collection_modifyitems(items):
  e2e = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e") + os.sep
  for item in items:
    if str(item.path).startswith(e2e):
      item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def subprocess_compile_cache(tmp_path_factory):
  """The jaxrec processes the tests start (each test worker's, one after another) share a
  persistent XLA compilation cache, so a program compiled by one run loads in the next
  instead of compiling again: most of these runs are the same tiny models. The variables
  are set after collection, when this process has read its JAX configuration, so the
  in-process tests (some count compiles) compile as before."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    yield


@pytest.fixture
def npz_file(tmp_path):
  """Writes arrays to an .npz under tmp_path and returns its path."""
  def write(arrays, name="emb.npz"):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path
  return write


@pytest.fixture
def assert_imports_without():
  """assert_imports_without(module, forbidden): importing `module` in a fresh interpreter loads
  none of the `forbidden` modules."""
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def check(module, forbidden):
    code = f"import {module}, sys; assert not {set(forbidden)!r} & set(sys.modules), sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=dict(os.environ, PYTHONPATH=repo),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
  return check
