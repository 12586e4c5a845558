"""A pytest plugin that only mutation testing loads (setup.cfg [mutmut], docs/mutation.md).

mutmut runs the tests once with its stats on, to learn which tests call each mutated
function, then runs each mutant against those tests in a fresh process (forked from a
server that has imported JAX but never run it), stopping at the first failure. With JAX:

- Under jax.jit a function is called only while it is traced, so a test that reuses a
  program an earlier test compiled would not be counted as calling it. In the stats run
  JAX's caches are cleared after each test, so every test traces what it uses anew.
- Each mutant's process compiles its programs afresh. A persistent compilation cache
  under mutants/ lets it load the programs the mutant does not change (keyed by the
  program, so a mutated program never hits an unmutated one's entry).
- Only the unit test files named in TESTS below are collected, and a mutant runs only
  against those of its own module: the dedicated unit tests, not every integration test
  that happens to call it.
- The *_without_jit tests are left out of the mutant runs: each repeats a jitted test's
  check op by op (eagerly), at many times its cost, and a mutant changes both alike.
- Its tests run fastest first (durations from the stats run): a killed mutant usually
  fails at its first test. Hypothesis does not shrink a failure: the first failing
  example is the kill.
"""

import json
import os

from hypothesis import Phase, settings

settings.register_profile("mutmut", phases=(Phase.explicit, Phase.generate))
settings.load_profile("mutmut")

# Module -> the unit test files that test it (and whose failures count as kills).
TESTS = {
    "masks": ("masks_test.py", "packing_test.py"),  # packing_test: segment masks of packed rows
    "attention": ("attention_test.py",),
    "filters": ("filters_test.py", "model_test.py"),  # model_test: the bsarec encoder
    "loss": ("loss_test.py", "loss_variants_test.py"),
    "metrics": ("metrics_test.py",),
    "packing": ("packing_test.py", "loss_variants_test.py"),
    "step": ("step_test.py", "packing_test.py", "loss_variants_test.py"),  # the latter: negatives
}


def pytest_ignore_collect(collection_path, config):
  del config
  wanted = {name for names in TESTS.values() for name in names}
  if collection_path.name.endswith("_test.py") and collection_path.name not in wanted:
    return True
  return None


def _mutant_module():
  """'masks' while a mutant of jaxrec.masks is under test, else None."""
  name = os.environ.get("MUTANT_UNDER_TEST", "")
  parts = name.split(".")
  return parts[1] if len(parts) >= 3 and parts[0] == "jaxrec" else None


def pytest_configure(config):
  del config
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(".jax_cache"))  # cwd: mutants/
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_collection_modifyitems(config, items):
  module = _mutant_module()
  if module is None:
    return
  files = TESTS.get(module, ())
  wanted = lambda item: item.path.name in files and "without_jit" not in item.name
  kept = [item for item in items if wanted(item)]
  dropped = [item for item in items if not wanted(item)]
  try:
    with open("mutmut-stats.json") as f:
      duration = json.load(f)["duration_by_test"]
  except (OSError, ValueError, KeyError):
    duration = {}
  kept.sort(key=lambda item: duration.get(item.nodeid, 0.0))
  if dropped:
    config.hook.pytest_deselected(items=dropped)
  items[:] = kept


def pytest_runtest_teardown(item, nextitem):
  del item, nextitem
  if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    import jax
    jax.clear_caches()
