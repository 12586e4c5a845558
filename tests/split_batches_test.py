"""--short_length: two encoder runs per batch give the same loss and steps as one."""

import tempfile

import jax
import numpy as np
import pytest

from jaxrec import data
from jaxrec import train
from jaxrec.model import ModelConfig

LOG = data.synthetic_click_log(400, 60, seed=4, mean_length=5)
SPLIT = data.leave_one_out(LOG)


def trainer(short_length: int, loss: str = "inbatch") -> train.Trainer:
  model = ModelConfig(num_items=LOG.num_items, seq_length=24, hidden_size=8, num_attention_heads=2,
                      num_hidden_layers=2, feed_forward_size=16)
  config = train.TrainConfig(model=model, batch_size=32, learning_rate=1e-2, eval_every_epochs=0,
                             short_length=short_length, loss=train.LossConfig(loss))
  return train.Trainer(config, SPLIT, tempfile.mkdtemp())


@pytest.mark.parametrize("loss", ["inbatch", "full"])
def test_split_batches_train_like_whole_batches(loss):
  whole, split = trainer(0, loss), trainer(6, loss)
  assert 0 < split.long_rows < split.rows
  a, b = whole.init_state(), split.init_state()
  for index in range(4):
    batch_a, _ = whole.batch(0, index)
    batch_b, _ = split.batch(0, index)
    assert batch_b["short_ids"].shape[0] + batch_b["long_ids"].shape[0] == batch_a["input_ids"].shape[0]
    a, metrics_a = whole.train_step(a, batch_a)
    b, metrics_b = split.train_step(b, batch_b)
    np.testing.assert_allclose(float(metrics_b["loss"]), float(metrics_a["loss"]), rtol=1e-5)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_split_by_length_groups_rows_and_falls_back_to_full_width():
  ids = np.array([[0, 0, 0, 5], [1, 2, 3, 4], [0, 0, 6, 7], [0, 0, 0, 0]], np.int32)
  batch = {"input_ids": ids}
  out = data.split_by_length(batch, short_length=2, long_rows=1)
  np.testing.assert_array_equal(out["order"], [3, 0, 2, 1])
  np.testing.assert_array_equal(out["short_ids"], [[0, 0], [0, 5], [6, 7]])
  np.testing.assert_array_equal(out["long_ids"], [[1, 2, 3, 4]])
  # Two rows longer than 2 but room for one: the short group runs at full width.
  wide = data.split_by_length({"input_ids": ids[[1, 1, 0, 3]]}, short_length=2, long_rows=1)
  assert wide["short_ids"].shape == (3, 4)
