"""Data shards (hosts.py): which users a process holds, and the batches of several shards.

The 2-process runs themselves are in multiprocess_test.py; here one process checks the
pieces against independent references: the holdout of the subset log, naive coverage
counts, and the plain layout's loss.
"""

import zlib

import jax
import numpy as np
import pytest

from jaxrec import click_log
from jaxrec import clicks
from jaxrec import holdout
from jaxrec import hosts
from jaxrec import input_pipeline
from jaxrec import step as step_lib
from jaxrec.config import LossConfig
from jaxrec.model import ModelConfig, Seq2Seq, init_params


def test_a_users_shard_is_its_ids_crc32_and_never_changes():
  # A resumed run, and every process of one, must put each user in the same shard: the
  # hash is part of the format. These are zlib.crc32 values, fixed by the standard.
  ids = np.array(["u1", "42", "ユーザー", "A0"])
  assert hosts.shard_of(ids, 7).tolist() == [zlib.crc32(u.encode()) % 7 for u in ids.tolist()]
  assert hosts.shard_of(ids, 4).tolist() == [2, 0, 2, 3]
  assert hosts.shard_of(ids, 1).tolist() == [0, 0, 0, 0]
  many = hosts.shard_of(np.array([f"user{i}" for i in range(20000)]), 4)
  assert np.all(np.abs(np.bincount(many, minlength=4) - 5000) < 300)  # balanced


@pytest.mark.parametrize("kind", ["leave_one_out", "time"])
def test_subset_split_equals_the_split_of_the_subset_log(kind):
  log = click_log.synthetic_click_log(200, 40, seed=1)
  # each user's k-th click at time 10 k: clicks 6-7 validate, 8 on test under the time split
  times = 10.0 * (np.arange(len(log.items)) - np.repeat(log.indptr[:-1], log.lengths()))
  log = clicks.ClickLog(log.user_ids, log.item_ids, log.indptr, log.items, times)
  make = (holdout.leave_one_out if kind == "leave_one_out"
          else lambda lg: holdout.time_split(lg, 60.0, 80.0))
  full = make(log)
  users = np.sort(np.random.default_rng(0).choice(log.num_users, 70, replace=False))
  counts = full.item_counts()
  got = hosts.subset_split(full, users, counts)
  want = make(hosts.subset_log(log, users))
  np.testing.assert_array_equal(got.log.user_ids, log.user_ids[users])
  for name in ("train_end", "valid_users", "valid_ends", "test_users", "test_ends"):
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
  np.testing.assert_array_equal(got.log.items, want.log.items)
  np.testing.assert_array_equal(got.user_index, users)
  assert got.item_counts() is counts  # the whole log's popularity, not the subset's
  # a subset of a subset still names users of the whole log
  again = hosts.subset_split(got, np.array([1, 5]), counts)
  np.testing.assert_array_equal(again.user_index, users[[1, 5]])


def _plan(split, layout, loss="inbatch", shards=2, devices=1):
  return hosts.ShardedPlan(split, 24, 10, 3, shards, devices, split.item_counts(),
                           real_slots=loss == "full", layout=layout)


@pytest.mark.parametrize("shards,devices", [(2, 1), (3, 1), (2, 4)])
def test_every_training_user_is_in_one_shard_batch_per_epoch(shards, devices):
  log = click_log.synthetic_click_log(301, 50, seed=2)
  split = holdout.leave_one_out(log)
  plan = _plan(split, "rows", shards=shards, devices=devices)
  shard_U = hosts.shard_of(log.user_ids, shards)
  for epoch in (0, 1):
    seen = []
    for p, s in zip(plan.plans, range(shards)):
      assert set(p.split.user_index) == set(np.flatnonzero(shard_U == s))
      for index in range(plan.steps_per_epoch):
        seen += p.split.user_index[p.train_users[p.rows_of(epoch, index)]].tolist()
    assert sorted(seen) == split.train_users.tolist()  # each once
  batches = list(plan.epoch(0))
  assert len(batches) == plan.steps_per_epoch
  assert sum(rows for _, rows in batches) == len(split.train_users)
  assert {b.input_ids.shape for b, _ in batches} == {(plan.rows, 10)}
  assert plan.rows == shards * plan.plans[0].rows and plan.plans[0].rows % max(1, devices // shards) == 0


@pytest.mark.parametrize("layout,loss", [("packed", "inbatch"), ("rows", "inbatch"), ("rows", "full")])
def test_sharded_batches_agree_on_shapes_and_give_the_plain_layouts_loss(layout, loss):
  log = click_log.synthetic_click_log(260, 30, seed=4)
  split = holdout.leave_one_out(log)
  fast, plain = _plan(split, layout, loss), _plan(split, "plain", loss)
  config = ModelConfig(num_items=log.num_items, seq_length=10, hidden_size=8, num_attention_heads=2)
  params = init_params(config, jax.random.key(0))
  cfg = LossConfig(loss)
  fn = jax.jit(lambda p, b: step_lib.loss_fn(p, Seq2Seq(config), b, None, cfg, None))
  needs = fast.needs(0)
  for index in range(fast.steps_per_epoch):
    parts = [p.batch(0, index, needs[index])[0] for p in fast.plans]
    shapes = {(type(b), *(None if v is None else np.shape(v) for v in (b.slots, getattr(b, "packed_ids", None))))
              for b in parts}
    assert len(shapes) == 1  # one compiled step serves every shard's part
    got, want = fast.batch(0, index)[0], plain.batch(0, index)[0]
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    np.testing.assert_array_equal(got.label, want.label)
    if layout == "packed":
      assert isinstance(got, input_pipeline.PackedBatch)
    np.testing.assert_allclose(float(fn(params, got)), float(fn(params, want)), rtol=2e-6)
