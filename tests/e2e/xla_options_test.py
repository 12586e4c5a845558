"""xla_options: when the YNNPACK dot option goes into XLA_FLAGS, and that XLA honours it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxrec import xla_options


@pytest.fixture
def env(monkeypatch):
  monkeypatch.setattr(xla_options, "_jaxlib_version", lambda: (0, 10, 2))
  return monkeypatch


def test_appended_to_the_users_flags(env):
  env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert xla_options.use_ynn_dots()
  assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {xla_options.YNN_DOTS}"
  assert xla_options.use_ynn_dots()  # a second call adds nothing
  assert os.environ["XLA_FLAGS"].count("ynn") == 1


def test_off_by_argument_or_unverified_jaxlib(env):
  env.delenv("XLA_FLAGS", raising=False)
  assert not xla_options.use_ynn_dots(False) and "XLA_FLAGS" not in os.environ
  for version in [(0, 9, 9), (0, 10, 1), (0, 11, 0), ()]:
    env.setattr(xla_options, "_jaxlib_version", lambda v=version: v)
    assert not xla_options.use_ynn_dots() and "XLA_FLAGS" not in os.environ


def test_the_users_own_setting_wins(env):
  other = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE"
  env.setenv("XLA_FLAGS", other)
  assert not xla_options.use_ynn_dots()
  assert os.environ["XLA_FLAGS"] == other


@pytest.mark.skipif(not xla_options._YNN_VERIFIED[0] <= xla_options._jaxlib_version() < xla_options._YNN_VERIFIED[1],
                    reason="jaxlib outside the verified versions")
def test_xla_accepts_it_and_dots_match_float64(tmp_path):
  """In a fresh process (the flag is read when the backend starts): the option is accepted
  (XLA aborts on an unknown flag) and a jitted dot stays within float32 rounding of float64."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((96, 64)), rng.standard_normal((64, 200))
  np.save(tmp_path / "a.npy", a.astype(np.float32))
  np.save(tmp_path / "b.npy", b.astype(np.float32))
  code = ("import numpy as np, jax, jax.numpy as jnp;"
          f"a, b = np.load('{tmp_path}/a.npy'), np.load('{tmp_path}/b.npy');"
          f"np.save('{tmp_path}/c.npy', np.asarray(jax.jit(jnp.matmul)(a, b)))")
  env = dict(os.environ, XLA_FLAGS=xla_options.YNN_DOTS)
  subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
  c = np.load(tmp_path / "c.npy")
  want = a.astype(np.float32).astype(np.float64) @ b.astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(c, want, rtol=0, atol=64 * 2 ** -23 * np.abs(want).max())
