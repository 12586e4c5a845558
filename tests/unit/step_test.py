"""Row-sparse ("lazy") Adam on the item tables against the dense step it stands in for."""

import tempfile

import jax
import numpy as np
import pytest

from jaxrec import config as config_lib
from jaxrec import click_log
from jaxrec import holdout
from jaxrec import step as step_lib
from jaxrec import train
from jaxrec.model import ModelConfig

LOG = click_log.synthetic_click_log(300, 400, seed=3, mean_length=6)
SPLIT = holdout.leave_one_out(LOG)


def trainer(sparse: bool, share: bool, loss: str) -> train.Trainer:
  model = ModelConfig(num_items=LOG.num_items, seq_length=8, hidden_size=8, num_attention_heads=2,
                      num_hidden_layers=1, share_embeddings=share)
  config = config_lib.make(model=model, batch_size=16, optimizer=config_lib.OptimizerConfig(1e-2), eval_every_epochs=0,
                             sparse_embedding_updates=sparse,
                             loss=config_lib.LossConfig(loss, **({'num_negatives': 5} if loss == 'mixed' else {})))
  return train.Trainer(config, SPLIT, tempfile.mkdtemp())


@pytest.mark.parametrize("share,loss", [(False, "inbatch"), (True, "mixed")])
def test_first_step_equals_dense_adam_and_untouched_rows_never_move(share, loss):
  dense_t, sparse_t = trainer(False, share, loss), trainer(True, share, loss)
  dense, sparse = dense_t.init_state(), sparse_t.init_state()
  init = jax.tree.map(np.asarray, sparse.params)
  batches = [sparse_t.batch(0, i)[0] for i in range(2)]
  dense, dense_metrics = dense_t.train_step(dense, batches[0])
  sparse, sparse_metrics = sparse_t.train_step(sparse, batches[0])
  # Step 1 from zero moments: rows with no gradient do not move in dense Adam either,
  # so both steps agree everywhere.
  np.testing.assert_allclose(float(sparse_metrics["loss"]), float(dense_metrics["loss"]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(sparse.params), jax.tree.leaves(dense.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  sparse, _ = sparse_t.train_step(sparse, batches[1])
  touched = [np.asarray(getattr(b, k)).ravel() for b in batches for k in ("input_ids", "label")]
  if loss == "mixed":  # the shared negatives each step sampled, derived as the step does
    for step in range(2):
      rng = jax.random.split(jax.random.fold_in(sparse.rng, step))[1]
      touched.append(np.asarray(step_lib.sample_negatives(sparse_t.item_log_q, rng, sparse_t.config.loss,
                                                       LOG.num_items)[0]))
  touched = np.unique(np.concatenate(touched))
  untouched = np.setdiff1d(np.arange(LOG.num_items), touched)
  assert len(untouched) > 50
  in_name, out_name = sparse_t.model.table_names()
  for name in {in_name, out_name}:
    now = np.asarray(sparse.params[name]["embedding"])
    np.testing.assert_array_equal(now[untouched], init[name]["embedding"][untouched])
    # The rows this table looked up (item 0, padding, gets no gradient) did move.
    keys = ("input_ids",) * (name == in_name) + ("label",) * (name == out_name)
    used = np.unique(np.concatenate([np.asarray(getattr(b, k)).ravel() for b in batches for k in keys]))
    moved = np.abs(now - init[name]["embedding"]).sum(axis=1) > 0
    assert moved[used[used > 0]].all()
