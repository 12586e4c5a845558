"""The input pipeline: batches, sampler, epoch order, slots and the length split, against
plain-Python references; a split batch trains like the whole one."""

import tempfile

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import config as config_lib
from jaxrec import click_log
from jaxrec import holdout
from jaxrec import input_pipeline
from jaxrec import packing
from jaxrec import step as step_lib
from jaxrec import train
from jaxrec.model import ModelConfig

def test_train_batch_matches_a_naive_construction():
  log = click_log.synthetic_click_log(100, 30, seed=2, mean_length=6)
  split = holdout.leave_one_out(log)
  sampler = input_pipeline.PopularitySampler(split.item_counts())
  users = split.train_users[:7]
  length, rows = 5, 9
  batch = input_pipeline.train_batch(split, sampler, users, rows, length, seed=3, epoch=1, step=4)
  assert batch.input_ids.shape == batch.label.shape == batch.hot_weight.shape == (rows, length)
  counts = split.item_counts()
  for r in range(rows):
    if r >= len(users):
      assert batch.row_mask[r] == 0 and not batch.input_ids[r].any()
      continue
    assert batch.row_mask[r] == 1
    train = list(log.items[log.indptr[users[r]]:split.train_end[users[r]]])
    inputs, labels = train[:-1][-length:], train[1:][-length:]
    pad = length - len(inputs)
    assert list(batch.input_ids[r]) == [0] * pad + inputs
    assert list(batch.label[r][pad:]) == labels
  assert (batch.label > 0).all()  # padded label slots hold sampled items, never padding
  np.testing.assert_allclose(batch.hot_weight, np.log(counts[batch.label] / counts.sum()), rtol=1e-6)
  again = input_pipeline.train_batch(split, sampler, users, rows, length, seed=3, epoch=1, step=4)
  for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)


def test_negatives_follow_popularity():
  counts = np.array([0, 1, 3, 6])
  sampler = input_pipeline.PopularitySampler(counts)
  draws = sampler.sample(np.random.default_rng(0), (60000,))
  np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), counts / 10, atol=0.01)


@settings(deadline=None, max_examples=50)
@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=300), st.integers(0, 2**32 - 1))
def test_guided_sampling_equals_a_plain_cdf_search(counts, seed):
  """The guide-table search returns exactly what searchsorted over the whole CDF returns."""
  counts = np.array([0] + counts)
  if counts.sum() == 0:
    counts[-1] = 1
  sampler = input_pipeline.PopularitySampler(counts)
  u = np.random.default_rng(seed).random((7, 50))
  want = np.minimum(np.searchsorted(sampler.cdf, u, side="right"), len(counts) - 1)
  got = sampler.sample(np.random.default_rng(seed), (7, 50))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert counts[got].min() > 0  # never an item nobody clicked


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  a = input_pipeline.epoch_order(50, 1, 3)
  np.testing.assert_array_equal(a, input_pipeline.epoch_order(50, 1, 3))
  assert sorted(a) == list(range(50))
  assert not np.array_equal(a, input_pipeline.epoch_order(50, 1, 4))


def test_left_padded_keeps_the_most_recent_items():
  items = np.arange(1, 11, dtype=np.int32)
  out = input_pipeline.left_padded(items, np.array([0, 2, 9]), np.array([10, 4, 9]), 4)
  np.testing.assert_array_equal(out, [[7, 8, 9, 10], [0, 0, 3, 4], [0, 0, 0, 0]])


@settings(deadline=None, max_examples=50)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 4]), st.integers(1, 40))
def test_real_slots_list_each_groups_real_slots(seed, groups, length):
  rng = np.random.default_rng(seed)
  rows = 4 * int(rng.integers(1, 5))
  ids = rng.integers(1, 9, (rows, length)) * (rng.random((rows, length)) < rng.random())
  row_mask = (rng.random(rows) < 0.8).astype(np.float32)
  slots = packing.real_slots(ids, row_mask, groups)
  per_group = rows // groups
  counts = []
  for g in range(groups):
    want = [(r - g * per_group) * length + l for r in range(g * per_group, (g + 1) * per_group)
            for l in range(length) if ids[r, l] != 0 and row_mask[r]]
    counts.append(len(want))
    assert slots[g, :len(want)].tolist() == want
    assert (slots[g, len(want):] == -1).all()
  most = max(counts)
  assert slots.shape[1] % 128 == 0 and most <= slots.shape[1] <= max(128, most + most // 8 + 127)


def test_slot_capacity_wastes_at_most_an_eighth():
  for n in range(1, 70000):
    c = packing.slot_capacity(n)
    assert c >= n and c % 128 == 0 and (c <= n * 9 / 8 if n >= 1024 else c - n < 128)


LOG = click_log.synthetic_click_log(400, 60, seed=4, mean_length=5)
SPLIT = holdout.leave_one_out(LOG)


def trainer(short_length: int, loss: str = "inbatch") -> train.Trainer:
  model = ModelConfig(num_items=LOG.num_items, seq_length=24, hidden_size=8, num_attention_heads=2,
                      num_hidden_layers=2, feed_forward_size=16)
  config = config_lib.make(model=model, batch_size=32, optimizer=config_lib.OptimizerConfig(1e-2), eval_every_epochs=0,
                             short_length=short_length, loss=config_lib.LossConfig(loss))
  return train.Trainer(config, SPLIT, tempfile.mkdtemp())


@pytest.mark.parametrize("loss", ["inbatch", "full"])
def test_split_batches_train_like_whole_batches(loss):
  whole, split = trainer(0, loss), trainer(6, loss)
  assert 0 < split.plan.long_rows < split.rows
  a, b = whole.init_state(), split.init_state()
  for index in range(4):
    batch_a, _ = whole.batch(0, index)
    batch_b, _ = split.batch(0, index)
    assert batch_b.short_ids.shape[0] + batch_b.long_ids.shape[0] == batch_a.input_ids.shape[0]
    a, metrics_a = whole.train_step(a, batch_a)
    b, metrics_b = split.train_step(b, batch_b)
    np.testing.assert_allclose(float(metrics_b["loss"]), float(metrics_a["loss"]), rtol=1e-5)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def batch_of(ids):
  zeros = np.zeros(ids.shape, np.float32)
  return input_pipeline.Batch(input_ids=ids, label=ids, hot_weight=zeros, row_mask=zeros[:, 0])


def test_split_by_length_groups_rows_and_falls_back_to_full_width():
  ids = np.array([[0, 0, 0, 5], [1, 2, 3, 4], [0, 0, 6, 7], [0, 0, 0, 0]], np.int32)
  out = input_pipeline.split_by_length(batch_of(ids), short_length=2, long_rows=1)
  np.testing.assert_array_equal(out.order, [3, 0, 2, 1])
  np.testing.assert_array_equal(out.short_ids, [[0, 0], [0, 5], [6, 7]])
  np.testing.assert_array_equal(out.long_ids, [[1, 2, 3, 4]])
  # Two rows longer than 2 but room for one: the short group runs at full width.
  wide = input_pipeline.split_by_length(batch_of(ids[[1, 1, 0, 3]]), short_length=2, long_rows=1)
  assert wide.short_ids.shape == (3, 4)


def shape_key(batch) -> tuple:
  """What the step compiles for: which optional fields a batch has and every array's shape."""
  return str(jax.tree.structure(batch)), tuple(np.shape(x) for x in jax.tree.leaves(batch))


@pytest.mark.parametrize("loss, buckets, layout", [("inbatch", (4, 8), "auto"), ("full", (), "auto"),
                                                   ("inbatch", (), "packed"), ("mixed", (8,), "rows")])
def test_train_step_compiles_once_per_padded_shape(monkeypatch, loss, buckets, layout):
  """Two epochs compile the step once per distinct batch shape, never again; a padded length
  has at most four (packed or not, logits at real slots or everywhere) besides --loss=full's
  slot capacities."""
  traces = []
  clean_step = step_lib.train_step

  def counted(*args, **kwargs):
    traces.append(1)  # runs only while jax traces the step
    return clean_step(*args, **kwargs)

  monkeypatch.setattr(step_lib, "train_step", counted)
  model = ModelConfig(num_items=LOG.num_items, seq_length=24, hidden_size=8, num_attention_heads=2,
                      num_hidden_layers=1)
  config = config_lib.make(model=model, batch_size=32, eval_every_epochs=0, bucket_lengths=buckets, layout=layout,
                             loss=config_lib.LossConfig(loss, **({'num_negatives': 4} if loss == 'mixed' else {})))
  t = train.Trainer(config, SPLIT, tempfile.mkdtemp())
  assert t.plan.layout == layout or layout == "auto"
  state, shapes = t.init_state(), []
  for epoch in range(2):
    for index in range(t.steps_per_epoch):
      batch, _ = t.batch(epoch, index)
      shapes.append(shape_key(batch))
      state, _ = t.train_step(state, batch)
  assert len(traces) == len(set(shapes))
  if buckets or loss == "full":
    assert len(set(shapes)) > 1  # the case exercises several shapes
  lengths = {batch_shape[1][0][1] for batch_shape in shapes}
  if loss != "full":
    assert len(set(shapes)) <= 4 * len(lengths)


def test_auto_layout_packs_short_histories_and_not_long_ones():
  model = ModelConfig(num_items=LOG.num_items, seq_length=24, hidden_size=8, num_attention_heads=2)
  plan = lambda split, **kw: input_pipeline.BatchPlan(split, 32, 24, 0, layout="auto", **kw)
  short = plan(SPLIT)  # mean length 5 at L = 24: a row holds about four users
  assert short.layout == "packed" and short.packed_share <= 0.5 and "packed" in short.describe()
  unpacked = plan(SPLIT, packable=False)  # e.g. --encoder=bsarec: its short rows split off instead
  assert unpacked.layout == "rows" and unpacked.short_length == 8 and 0 < unpacked.long_rows < 32
  assert "split off" in unpacked.describe()
  assert plan(SPLIT, short_length=8).layout == "rows"
  long_log = click_log.synthetic_click_log(200, 60, seed=1, mean_length=40)
  long = plan(holdout.leave_one_out(long_log))
  assert long.layout == "rows" and long.packed_share > 0.5
  del model


def test_prefetch_yields_the_same_batches_and_training_is_bit_identical(tmp_path):
  model = ModelConfig(num_items=LOG.num_items, seq_length=24, hidden_size=8, num_attention_heads=2,
                      num_hidden_layers=1)
  t = train.Trainer(config_lib.make(model=model, batch_size=32, eval_every_epochs=0), SPLIT, tempfile.mkdtemp())
  plain, ahead = list(t.plan.epoch(1)), list(input_pipeline.prefetch(t.plan.epoch(1), 2))
  assert len(plain) == len(ahead) == t.steps_per_epoch
  for (a, rows_a), (b, rows_b) in zip(plain, ahead):
    assert rows_a == rows_b
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(x, y)
  finals = []
  for depth in (0, 2):
    config = config_lib.make(model=model, batch_size=32, num_epochs=2, eval_every_epochs=0, prefetch=depth)
    workdir = str(tmp_path / f"prefetch{depth}")
    train.train_and_evaluate(config, SPLIT, workdir)
    from jaxrec import checkpoints
    mgr = checkpoints.manager(workdir, writer=False)
    finals.append(jax.tree.leaves(checkpoints.restore_params(mgr, mgr.latest_step())))
  for x, y in zip(*finals, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_prefetch_raises_where_the_builder_failed():
  def broken():
    yield 1
    raise ValueError("bad batch")
  got = input_pipeline.prefetch(broken(), 2)
  assert next(got) == 1
  with pytest.raises(ValueError, match="bad batch"):
    next(got)
