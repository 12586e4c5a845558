"""Exact packing and real-slot scoring (packing.pack, level_rows; step.loss_fn).

Packed rows hold several users, each a segment with its own positions under a
block-diagonal causal mask; the in-batch loss scores only the real slots. Against the
plain path (one user per row, logits at every slot) and a float64 run of it: the same
loss and gradients; and no output of one user depends on another user's items.

Shape key: B batch rows, L padded length, G device groups, P packed rows per group.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import input_pipeline
from jaxrec import packing
from jaxrec import step as step_lib
from jaxrec.config import LossConfig
from jaxrec.input_pipeline import Batch, PackedBatch
from jaxrec.model import ModelConfig, Seq2Seq, init_params, position_ids

NUM_ITEMS, BATCH, LENGTH = 30, 6, 8
CONFIGS = {
    "spec": ModelConfig(num_items=NUM_ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=2),
    "ffn_shared_backward_norm": ModelConfig(
        num_items=NUM_ITEMS, seq_length=LENGTH, hidden_size=8, num_attention_heads=2, feed_forward_size=8,
        share_embeddings=True, position_order="backward", embedding_layer_norm=True),
}
LOSSES = {
    "inbatch": LossConfig(),
    "hits_corrected": LossConfig(remove_accidental_hits=True, log_q="corrected"),
    "mixed": LossConfig("mixed", remove_accidental_hits=True, num_negatives=5),
    "full": LossConfig("full"),
}


def left_padded_batch(rng, lengths_B, length=LENGTH, row_mask_B=None) -> Batch:
  """A training batch of users with `lengths_B` real inputs (labels everywhere, as SPEC 1)."""
  rows = len(lengths_B)
  real_BxL = np.arange(length)[None, :] >= length - np.asarray(lengths_B)[:, None]
  ids = np.where(real_BxL, rng.integers(1, NUM_ITEMS, (rows, length)), 0).astype(np.int32)
  label = rng.integers(1, NUM_ITEMS, (rows, length)).astype(np.int32)
  label[:, :3] = label[:, 3:6]  # repeated labels: accidental hits to remove
  hot_weight = np.log(rng.uniform(1e-3, 0.3, (rows, length))).astype(np.float32)
  row_mask = np.ones(rows, np.float32) if row_mask_B is None else np.asarray(row_mask_B, np.float32)
  return Batch(input_ids=ids, label=label, hot_weight=hot_weight, row_mask=row_mask)


def exact_layouts(batch: Batch, groups: int, loss: LossConfig) -> tuple:
  """(plain, packed + real slots) versions of `batch` with capacities that always fit."""
  per_group = batch.input_ids.shape[0] // groups
  if loss.kind == "full":
    plain = batch.replace(slots=packing.real_slots(batch.input_ids, batch.row_mask, groups))
    fast = plain
  else:
    plain = batch
    capacities = (per_group,) * (len(packing.level_ends(batch.input_ids.shape[1])) - 1)
    fast = batch.replace(loss_rows=packing.level_rows(batch.input_ids, batch.row_mask, groups,
                                                             capacities))
  packed_ids, segments, unpack = packing.pack(batch.input_ids, groups, per_group)
  return plain, PackedBatch(**input_pipeline.fields_of(fast), packed_ids=packed_ids, segments=segments, unpack=unpack)


def random_params(config, seed):
  shapes = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: rng.normal(scale=0.5, size=p.shape).astype(np.float32), shapes)


def negatives(loss, dtype=jnp.float32):
  if loss.kind != "mixed":
    return None
  ids = jnp.array([1, 4, 9, 16, 25], jnp.int32)
  return ids, jnp.log(jnp.full((5,), 5.0 / NUM_ITEMS, dtype))


def loss_and_grads(params, config, batch, loss):
  fn = lambda p: step_lib.loss_fn(p, Seq2Seq(config), batch, None, loss, negatives(loss))
  return jax.value_and_grad(fn)(params)


@functools.lru_cache(maxsize=None)
def jitted_loss_and_grads(config, loss):
  return jax.jit(lambda params, batch: loss_and_grads(params, config, batch, loss))


@functools.lru_cache(maxsize=None)
def jitted_float64_loss_and_grads(config, loss):
  """For calls under jax.enable_x64. Jitted: op by op, the float64 run took a second an example."""
  fn = lambda p, batch: step_lib.loss_fn(p, Seq2Seq(config), batch, None, loss, negatives(loss, jnp.float64))
  return jax.jit(jax.value_and_grad(fn))


def float64_reference(params, config, batch, loss):
  """The plain path's loss and gradients computed in float64."""
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    batch64 = batch.replace(hot_weight=np.asarray(batch.hot_weight, np.float64),
                            row_mask=np.asarray(batch.row_mask, np.float64))
    value, grads = jitted_float64_loss_and_grads(config, loss)(params64, batch64)
    assert value.dtype == np.float64
    return float(value), jax.tree.map(np.asarray, grads)


def assert_close_to(reference, got):
  value, grads = reference
  assert abs(float(got[0]) - value) <= 1e-5 * max(1.0, abs(value))
  for want, have in zip(jax.tree.leaves(grads), jax.tree.leaves(got[1]), strict=True):
    np.testing.assert_allclose(np.asarray(have), want, rtol=2e-4, atol=2e-5)


@st.composite
def batches(draw):
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  lengths = [draw(st.integers(0, LENGTH)) for _ in range(BATCH)]
  padded_rows = draw(st.integers(0, 2))  # rows that only pad the batch to a device multiple
  row_mask = [1.0] * (BATCH - padded_rows) + [0.0] * padded_rows
  lengths = [n if m else 0 for n, m in zip(lengths, row_mask)]
  return left_padded_batch(rng, lengths, row_mask_B=row_mask), int(rng.integers(1 << 30))


# Every (config, loss, groups) combination, each on a few random batches.
@pytest.mark.parametrize("groups", (1, 2))
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(deadline=None, max_examples=4)
@given(case=batches())
def test_packed_real_slot_loss_and_gradients_match_the_plain_path_and_float64(case, config, loss, groups):
  batch, seed = case
  config, loss = CONFIGS[config], LOSSES[loss]
  params = random_params(config, seed)
  plain, packed = exact_layouts(batch, groups, loss)
  reference = float64_reference(params, config, plain, loss)
  fn = jitted_loss_and_grads(config, loss)
  assert_close_to(reference, fn(params, plain))
  assert_close_to(reference, fn(params, packed))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_packed_loss_matches_without_jit(loss):
  config, loss = CONFIGS["ffn_shared_backward_norm"], LOSSES[loss]
  rng = np.random.default_rng(3)
  batch = left_padded_batch(rng, [8, 1, 0, 3, 5, 2], row_mask_B=[1, 1, 1, 1, 1, 0])
  params = random_params(config, 3)
  plain, packed = exact_layouts(batch, 2, loss)
  reference = float64_reference(params, config, plain, loss)
  with jax.disable_jit():
    assert_close_to(reference, loss_and_grads(params, config, packed, loss))


def packed_outputs(config, params, packed_ids, segments, item_vectors=None):
  return Seq2Seq(config).apply({"params": params}, packed_ids, True, item_vectors, False, segments,
                               method=Seq2Seq.encode)


@settings(deadline=None, max_examples=15)
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(CONFIGS)))
def test_no_output_depends_on_another_users_items_nor_on_later_ones(seed, config):
  """Through gradients: d(outputs of user u up to position t) / d(input vectors of the packed
  row) is exactly 0 at every slot of another user and at u's slots after t."""
  config = CONFIGS[config]
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 5, BATCH)
  batch = left_padded_batch(rng, lengths)
  packed_ids, segments, unpack = packing.pack(batch.input_ids, 1, BATCH)
  params = random_params(config, seed)
  vectors = jnp.take(params["item_embeddings"]["embedding"], packed_ids, axis=0)
  user = int(rng.integers(BATCH))
  slots = unpack[0].reshape(BATCH, LENGTH)[user]
  slots = slots[slots >= 0]  # u's packed slots, in order
  t = int(rng.integers(len(slots)))
  row, first = divmod(int(slots[0]), LENGTH)
  weights = rng.normal(size=(LENGTH, config.hidden_size)).astype(np.float32)
  weights[np.arange(LENGTH) > first + t] = 0.0
  weights[:first] = 0.0

  def user_outputs(v):
    return jnp.sum(packed_outputs(config, params, packed_ids, segments, v)[row] * weights)

  grad = np.asarray(jax.grad(user_outputs)(vectors))
  own = np.zeros(grad.shape[:2], bool)
  own[row, first:first + t + 1] = True
  np.testing.assert_array_equal(grad[~own], 0.0)
  assert np.abs(grad[own]).max() > 1e-5  # the check has teeth


@settings(deadline=None, max_examples=15)
@given(st.integers(0, 2**32 - 1))
def test_changing_other_users_in_the_row_leaves_a_users_outputs_bit_identical(seed):
  config = CONFIGS["spec"]
  rng = np.random.default_rng(seed)
  batch = left_padded_batch(rng, rng.integers(1, 4, BATCH))
  rows = packing.first_fit((batch.input_ids != 0).sum(axis=1), LENGTH)[3]
  packed_ids, segments, _ = packing.pack(batch.input_ids, 1, rows)
  assert rows < BATCH and (segments.max(axis=1) > 1).any()  # users do share rows
  params = random_params(config, seed)
  first_segment = segments == 1
  changed = np.where(first_segment | (packed_ids == 0), packed_ids, (packed_ids % (NUM_ITEMS - 1)) + 1)
  before = np.asarray(packed_outputs(config, params, packed_ids, segments))
  after = np.asarray(packed_outputs(config, params, changed.astype(np.int32), segments))
  np.testing.assert_array_equal(after[first_segment], before[first_segment])
  assert not np.allclose(after[segments > 1], before[segments > 1])


@settings(deadline=None, max_examples=50)
@given(st.lists(st.integers(0, LENGTH), min_size=2, max_size=12), st.sampled_from((1, 2)),
       st.sampled_from(("forward", "backward")))
def test_pack_places_every_user_once_in_order_with_its_own_positions(lengths, groups, order):
  lengths = lengths[:len(lengths) // groups * groups]
  rng = np.random.default_rng(len(lengths))
  batch = left_padded_batch(rng, lengths)
  per_group = len(lengths) // groups
  needed = max(packing.first_fit(np.asarray(lengths[g * per_group:(g + 1) * per_group]), LENGTH)[3]
               for g in range(groups))
  assert needed <= per_group and needed * LENGTH >= max(sum(lengths[g * per_group:(g + 1) * per_group])
                                                        for g in range(groups))
  packed_ids, segments, unpack = packing.pack(batch.input_ids, groups, needed)
  if needed:
    assert packing.pack(batch.input_ids, groups, needed - 1) is None
  assert packed_ids.shape == segments.shape == (groups * needed, LENGTH)
  seen = np.zeros(packed_ids.shape, int)
  plain_positions = np.asarray(position_ids(batch.input_ids, order))
  packed_positions = np.asarray(position_ids(packed_ids, order, segments))
  for b, n in enumerate(lengths):
    g, local = divmod(b, per_group)
    index = unpack[g].reshape(per_group, LENGTH)[local]
    assert (index[:LENGTH - n] == -1).all()
    rows, cols = np.divmod(index[LENGTH - n:], LENGTH)
    rows = rows + g * needed
    if n:
      assert (rows == rows[0]).all() and (np.diff(cols) == 1).all()  # one contiguous segment
      assert (segments[rows, cols] == segments[rows[0], cols[0]]).all() and segments[rows[0], cols[0]] > 0
      np.testing.assert_array_equal(packed_ids[rows, cols], batch.input_ids[b, LENGTH - n:])
      np.testing.assert_array_equal(packed_positions[rows, cols], plain_positions[b, LENGTH - n:])
    seen[rows, cols] += 1
  assert (seen <= 1).all() and ((seen == 1) == (packed_ids != 0)).all()
  assert (segments[packed_ids == 0] == 0).all()


def test_level_rows_list_each_groups_rows_per_level_and_refuse_overflow():
  rng = np.random.default_rng(0)
  length = 32  # levels: the last 8 positions, then 8..16, then 16..32 back from the end
  batch = left_padded_batch(rng, [32, 10, 0, 17, 9, 3], length)
  assert packing.level_ends(length) == (8, 16, 32)
  rows = packing.level_rows(batch.input_ids, batch.row_mask, 2, (3, 3))
  # group 0: lengths 32, 10, 0; group 1: 17, 9, 3. Level starts 8, 16.
  assert [r.tolist() for r in rows] == [[[0, 1, -1], [0, 1, -1]], [[0, -1, -1], [0, -1, -1]]]
  assert packing.level_rows(batch.input_ids, batch.row_mask, 2, (1, 3)) is None
  levels = packing.loss_levels(length, rows)
  assert [(lo, hi) for lo, hi, _ in levels] == [(24, 32), (16, 24), (0, 16)]


@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.sampled_from((1, 2, 3)),
       st.sampled_from((8, 9, 20, 40)))
def test_level_counts_count_each_groups_rows_reaching_each_level(lengths, groups, length):
  """Against a loop over groups, levels after the first and rows: rows whose length passes
  the level's start (8, 16, 32, ... back from the end) have real slots in it."""
  lengths = np.minimum(lengths[:len(lengths) // groups * groups] or [0] * groups, length)
  lengths_GxR = np.asarray(lengths).reshape(groups, -1)
  starts = [s for s in packing.LEVEL_LENGTHS if s < length]
  want = [[sum(1 for n in row if n > start) for start in starts] for row in lengths_GxR]
  got = packing.level_counts(lengths_GxR, length)
  assert got.shape == (groups, len(starts))
  np.testing.assert_array_equal(got, np.asarray(want).reshape(groups, len(starts)))


def test_with_slack_adds_an_eighth_rounded_up():
  for n in range(0, 100):
    assert packing.with_slack(n) == n + math.ceil(n / 8), n


def test_round_up_and_slot_capacity_follow_their_definitions():
  """round_up: the least multiple >= n. slot_capacity: n rounded up to a multiple of
  max(128, 2^(bits(n) - 4)) (at least one), so at most n / 8 more from n = 1024 on."""
  for n in range(0, 300):
    for multiple in (1, 3, 8, 128):
      assert packing.round_up(n, multiple) == multiple * math.ceil(n / multiple), (n, multiple)
  for n in list(range(0, 2100)) + [5000, 65535, 65536, 100_001]:
    step = max(128, 2 ** max(0, n.bit_length() - 4))
    capacity = packing.slot_capacity(n)
    assert capacity % step == 0 and n <= capacity < max(n, 1) + step, n
    if n >= 1024:
      assert capacity <= n + n / 8, n


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**32 - 1), st.sampled_from((1, 2, 3)), st.booleans())
def test_real_slots_list_each_groups_real_slots_then_minus_one(seed, groups, agreed):
  """Against a loop: per group of rows, the flat indices (row * L + t within the group) of
  the real slots of unmasked rows, in order, then -1; the capacity from the group with the
  most (or from `most`, agreed between shards), by slot_capacity. Up to 300 slots a group:
  past one 128-slot step."""
  rng = np.random.default_rng(seed)
  rows, length = 6 * groups, 64
  lengths = rng.integers(0, length + 1, rows)
  batch = left_padded_batch(rng, lengths, length, row_mask_B=rng.random(rows) < 0.8)
  per_group = rows // groups
  want = []
  for g in range(groups):
    index = [b * length + t for b in range(per_group) for t in range(length)
             if batch.input_ids[g * per_group + b, t] != 0 and batch.row_mask[g * per_group + b] > 0]
    want.append(index)
  most = max(len(w) for w in want)
  if agreed:
    most += int(rng.integers(0, 200))  # another shard has more
  slots = packing.real_slots(batch.input_ids, batch.row_mask, groups, most if agreed else None)
  assert slots.dtype == np.int32 and slots.shape == (groups, packing.slot_capacity(most))
  for g in range(groups):
    np.testing.assert_array_equal(slots[g, :len(want[g])], want[g])
    assert (slots[g, len(want[g]):] == -1).all()
