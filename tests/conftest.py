"""Fixtures shared by the tests of exported arrays (recall, embeddings)."""

import numpy as np
import pytest


@pytest.fixture
def npz_file(tmp_path):
  """Writes arrays to an .npz under tmp_path and returns its path."""
  def write(arrays, name="emb.npz"):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path
  return write
