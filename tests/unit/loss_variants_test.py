"""The loss extensions (accidental-hit removal, mixed negatives, full softmax) against loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import packing
from jaxrec import loss

jax.config.update("jax_numpy_rank_promotion", "raise")

B, L, D, N, I = 4, 3, 5, 3, 6


@st.composite
def inputs(draw):
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  out = rng.normal(size=(B, L, D)).astype(np.float32)
  table = rng.normal(size=(I, D)).astype(np.float32)
  label = rng.integers(1, 4, (B, L)).astype(np.int32)  # few items: accidental hits are common
  weight = np.log(rng.uniform(1e-3, 0.5, (B, L))).astype(np.float32)
  num_pad = rng.integers(0, L, B)
  mask = (np.arange(L)[None, :] >= num_pad[:, None]).astype(np.float32)
  row_mask = np.array([1, 1, 1, draw(st.sampled_from([0, 1]))], np.float32)
  extra_ids = rng.integers(1, I, N).astype(np.int32)
  extra_log_q = np.log(rng.uniform(1e-3, 0.5, N)).astype(np.float32)
  return out, table, label, weight, mask, row_mask, extra_ids, extra_log_q


def naive(out, table, label, weight, mask, row_mask, extra_ids=None, extra_log_q=None, hits=False,
          pos_log_q=None):
  """Double loop: -log softmax over the kept in-batch (and extra) candidates, float64.

  With `pos_log_q` (corrected logQ): the positive is the raw score, each negative's
  correction is log(q_j / (1 - q_pos)), and the slot's loss is weighted by 1 - p_pos.
  """
  out, table, weight = (np.asarray(a, np.float64) for a in (out, table, weight))
  batch, length = np.shape(mask)
  total, count = 0.0, 0
  for b in range(batch):
    for l in range(length):
      if not (mask[b, l] and row_mask[b]):
        continue
      shift = 0.0 if pos_log_q is None else math.log(1.0 - math.exp(pos_log_q[b, l]))
      pos = out[b, l] @ table[label[b, l]] - (weight[b, l] if pos_log_q is None else 0.0)
      logits = [pos]
      for m in range(batch):
        if m == b or not row_mask[m] or (hits and label[m, l] == label[b, l]):
          continue
        logits.append(out[b, l] @ table[label[m, l]] - weight[m, l] + shift)
      if extra_ids is not None:
        for n, item in enumerate(extra_ids):
          if not (hits and item == label[b, l]):
            logits.append(out[b, l] @ table[item] - extra_log_q[n] + shift)
      top = max(logits)
      nll = top + math.log(sum(math.exp(x - top) for x in logits)) - pos
      total += nll if pos_log_q is None else (1.0 - math.exp(-nll)) * nll
      count += 1
  return total / count


@settings(deadline=None, max_examples=25)
@given(inputs(), st.booleans(), st.booleans())
def test_in_batch_variants_equal_loops(args, hits, mixed):
  out, table, label, weight, mask, row_mask, extra_ids, extra_log_q = args
  extra = {}
  if mixed:
    extra = {"extra_emb_NxD": table[extra_ids], "extra_ids_N": extra_ids, "extra_log_q_N": extra_log_q}
  got = loss.in_batch_softmax_loss(out, table[label], weight, mask, row_mask, label, hits, **extra)
  want = naive(out, table, label, weight, mask, row_mask, extra_ids if mixed else None,
               extra_log_q if mixed else None, hits)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-5)


@settings(deadline=None, max_examples=25)
@given(inputs(), st.booleans(), st.booleans(), st.floats(0.0, 2.0))
def test_corrected_log_q_equals_loop(args, hits, mixed, log_b):
  """--log_q=corrected, where the candidates' logQ may carry a log-scale (mixed: log B)."""
  out, table, label, weight, mask, row_mask, extra_ids, extra_log_q = args
  extra = {}
  if mixed:
    extra = {"extra_emb_NxD": table[extra_ids], "extra_ids_N": extra_ids, "extra_log_q_N": extra_log_q}
  scaled = weight + np.float32(log_b)
  got = jax.jit(loss.in_batch_softmax_loss, static_argnums=6)(
      out, table[label], scaled, mask, row_mask, label, hits, **extra, pos_log_q_BxL=weight)
  want = naive(out, table, label, scaled, mask, row_mask, extra_ids if mixed else None,
               extra_log_q if mixed else None, hits, pos_log_q=weight)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-5)


def test_corrected_log_q_weight_has_no_gradient():
  """The gradient is (1 - p_pos) times the plain softmax gradient of the corrected logits."""
  rng = np.random.default_rng(1)
  out = rng.normal(size=(B, L, D))
  emb = rng.normal(size=(B, L, D))
  weight = np.log(rng.uniform(1e-3, 0.5, (B, L)))
  mask = np.ones((B, L))
  with jax.enable_x64():
    f = lambda o: loss.in_batch_softmax_loss(o, emb, weight, mask, pos_log_q_BxL=weight)
    got = jax.grad(f)(out)
  # Reference: finite differences of the same loss with the weight frozen at `out`.
  nll = np.zeros((B, L))
  def frozen(o, w_BxL):
    total = 0.0
    for b in range(B):
      for l in range(L):
        shift = math.log(1.0 - math.exp(weight[b, l]))
        logits = [o[b, l] @ emb[b, l]] + [o[b, l] @ emb[m, l] - weight[m, l] + shift for m in range(B) if m != b]
        top = max(logits)
        nll[b, l] = top + math.log(sum(math.exp(x - top) for x in logits)) - logits[0]
        total += w_BxL[b, l] * nll[b, l]
    return total / (B * L)
  frozen(out, np.ones((B, L)))
  w = 1.0 - np.exp(-nll)
  eps, want = 1e-6, np.zeros_like(out)
  for idx in np.ndindex(out.shape):
    up, down = out.copy(), out.copy()
    up[idx] += eps
    down[idx] -= eps
    want[idx] = (frozen(up, w) - frozen(down, w)) / (2 * eps)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-8)


@settings(deadline=None, max_examples=20)
@given(inputs(), st.sampled_from([0.0, 0.1, 0.5]))
def test_full_softmax_equals_loop(args, smoothing):
  out, table, label, _, mask, row_mask, _, _ = args
  got = loss.full_softmax_loss(out, table, label, mask, row_mask, label_smoothing=smoothing)
  out64, table64 = out.astype(np.float64), table.astype(np.float64)
  total, count = 0.0, 0
  for b in range(B):
    for l in range(L):
      if mask[b, l] and row_mask[b]:
        logits = [out64[b, l] @ table64[i] for i in range(1, I)]  # padding item 0 is no candidate
        top = max(logits)
        log_p = [x - top - math.log(sum(math.exp(y - top) for y in logits)) for x in logits]
        target = [smoothing / (I - 1) + (1 - smoothing) * (i == label[b, l]) for i in range(1, I)]
        total -= sum(t * lp for t, lp in zip(target, log_p))  # cross-entropy with the smoothed target
        count += 1
  np.testing.assert_allclose(float(got), total / count, rtol=2e-5, atol=2e-5)


@settings(deadline=None, max_examples=20)
@given(inputs(), st.sampled_from([0.0, 0.1, 0.5]))
def test_full_softmax_gradient_equals_closed_form(args, smoothing):
  """d loss / d logit[t, i] = (softmax - smoothed target) / count, in float64."""
  out, table, label, _, mask, row_mask, _, _ = args
  f = lambda o, t: loss.full_softmax_loss(o, t, label, mask, row_mask, label_smoothing=smoothing)
  got_out, got_table = jax.grad(f, argnums=(0, 1))(out, table)
  out64, table64 = out.astype(np.float64), table.astype(np.float64)
  want_out, want_table = np.zeros_like(out64), np.zeros_like(table64)
  real = [(b, l) for b in range(B) for l in range(L) if mask[b, l] and row_mask[b]]
  for b, l in real:
    logits = table64[1:] @ out64[b, l]  # item 0 is no candidate and gets no gradient
    p = np.exp(logits - logits.max())
    p /= p.sum()
    target = np.full(I - 1, smoothing / (I - 1))
    target[label[b, l] - 1] += 1 - smoothing
    d_logits = (p - target) / len(real)
    want_out[b, l] = d_logits @ table64[1:]
    want_table[1:] += np.outer(d_logits, out64[b, l])
  np.testing.assert_allclose(np.asarray(got_out), want_out, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_table), want_table, rtol=1e-4, atol=1e-6)


@settings(deadline=None, max_examples=20)
@given(inputs(), st.sampled_from([1, 2, 4]))
def test_full_softmax_over_gathered_real_slots(args, groups):
  """Scoring only the real slots, gathered per group of rows, equals scoring every slot."""
  out, table, label, _, mask, row_mask, _, _ = args
  slots = packing.real_slots(mask.astype(np.int32), row_mask, groups)
  f = lambda o, s: loss.full_softmax_loss(o, table, label, mask, row_mask, s)
  np.testing.assert_allclose(float(jax.jit(f)(out, slots)), float(f(out, None)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.grad(f)(out, slots)), np.asarray(jax.grad(f)(out, None)),
                             rtol=1e-5, atol=1e-7)


def test_no_hits_to_remove_changes_nothing():
  rng = np.random.default_rng(0)
  out = rng.normal(size=(B, L, D)).astype(np.float32)
  emb = rng.normal(size=(B, L, D)).astype(np.float32)
  weight = np.zeros((B, L), np.float32)
  mask = np.ones((B, L), np.float32)
  label = np.arange(B * L, dtype=np.int32).reshape(B, L) + 1  # all distinct
  plain = loss.in_batch_softmax_loss(out, emb, weight, mask)
  removed = loss.in_batch_softmax_loss(out, emb, weight, mask, None, label, True)
  np.testing.assert_allclose(float(plain), float(removed), rtol=1e-6)


# ----------------------------------------------------------------------------- --loss=mixed proposals


@pytest.mark.parametrize("distribution, alpha, share", [("uniform", 1.0, 0.5), ("popularity", 1.0, 0.5),
                                                         ("popularity", 0.5, 0.5), ("popularity", 0.0, 0.5),
                                                         ("mix", 0.75, 0.3)])
def test_negative_proposals_draw_what_they_correct_for(distribution, alpha, share):
  """The draw's frequencies match q (a chi-square bound), and each draw's logQ is log(N q)."""
  from jaxrec.config import LossConfig
  from jaxrec.step import sample_negatives
  counts = np.array([0, 50, 20, 20, 5, 0, 3, 1, 1], np.float64)  # row 0 padding, item 5 never clicked
  num_items, n = len(counts), 200_000
  with np.errstate(divide="ignore"):
    log_q_I = np.maximum(np.log(counts / counts.sum()), -1e4).astype(np.float32)
  loss = LossConfig(kind="mixed", num_negatives=n, negative_distribution=distribution, negative_alpha=alpha,
                    negative_uniform_share=share)
  ids, log_q = (np.asarray(x) for x in sample_negatives(jnp.asarray(log_q_I), jax.random.key(0), loss, num_items))
  # The proposal, in float64 from its definition.
  uniform = np.r_[0.0, np.full(num_items - 1, 1 / (num_items - 1))]
  powered = np.where(counts > 0, counts ** alpha, 0.0)
  popularity = powered / powered.sum()
  q = {"uniform": uniform, "popularity": popularity, "mix": share * uniform + (1 - share) * popularity}[distribution]
  freq = np.bincount(ids, minlength=num_items) / n
  assert freq[0] == 0 and np.all(freq[q == 0] == 0)
  seen = q > 0
  chi2 = n * np.sum((freq[seen] - q[seen]) ** 2 / q[seen])
  assert chi2 < 30, (freq, q)  # 8 degrees of freedom at most: p < 1e-3
  np.testing.assert_allclose(log_q, np.log(n * q[ids]), rtol=1e-5, atol=1e-5)


@settings(deadline=None, max_examples=10)
@given(inputs(), st.booleans())
def test_mixed_loss_gradients_equal_float64_differences(args, hits):
  """For a fixed draw of extra negatives, the gradients of the mixed loss (with logQ and
  accidental hits removed) w.r.t. the outputs and the item table are the float64 loop's,
  by central differences."""
  out, table, label, weight, mask, row_mask, extra_ids, extra_log_q = args

  def f(out, table):
    return loss.in_batch_softmax_loss(out, table[label], weight, mask, row_mask, label, hits,
                                      extra_emb_NxD=table[extra_ids], extra_ids_N=extra_ids, extra_log_q_N=extra_log_q)

  got_out, got_table = (np.asarray(g) for g in jax.grad(f, argnums=(0, 1))(out, table))
  h = 1e-6
  for x, got in ((out, got_out), (table, got_table)):
    want = np.zeros(x.shape)
    for index in np.ndindex(x.shape):
      plus, minus = (np.array(x, np.float64) for _ in range(2))
      plus[index] += h
      minus[index] -= h
      pair = [(p if x is out else out, p if x is table else table) for p in (plus, minus)]
      want[index] = (naive(pair[0][0], pair[0][1], label, weight, mask, row_mask, extra_ids, extra_log_q, hits)
                     - naive(pair[1][0], pair[1][1], label, weight, mask, row_mask, extra_ids, extra_log_q, hits)) / (2 * h)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


LONG = 20  # levels (packing.loss_levels): positions 12..19 for every row, 4..11, 0..3


@settings(deadline=None, max_examples=15)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2]), st.booleans(), st.booleans(), st.booleans())
def test_levels_score_each_real_slot_once(seed, groups, hits, mixed, corrected):
  """Scoring each level only for the rows with real slots in it (the packed path's
  `levels`) gives the loop's loss, for every variant; capacities leave unused (-1) rows."""
  rng = np.random.default_rng(seed)
  rows = 6
  lengths = rng.choice([0, 3, 8, 9, 15, 17, LONG], rows)
  row_mask = np.ones(rows, np.float32)
  row_mask[-1] = rng.integers(0, 2)
  lengths[row_mask == 0] = 0
  mask = (np.arange(LONG)[None, :] >= LONG - lengths[:, None]).astype(np.float32)
  ids = np.where(mask > 0, rng.integers(1, I, (rows, LONG)), 0).astype(np.int32)
  out = rng.normal(size=(rows, LONG, D)).astype(np.float32)
  table = rng.normal(size=(I, D)).astype(np.float32)
  label = rng.integers(1, 4, (rows, LONG)).astype(np.int32)
  weight = np.log(rng.uniform(1e-3, 0.5, (rows, LONG))).astype(np.float32)
  extra_ids = rng.integers(1, I, N).astype(np.int32)
  extra_log_q = np.log(rng.uniform(1e-3, 0.5, N)).astype(np.float32)
  per_group = rows // groups
  loss_rows = packing.level_rows(ids, row_mask, groups, (per_group, per_group))
  levels = packing.loss_levels(LONG, loss_rows)
  assert [(lo, hi) for lo, hi, _ in levels] == [(12, 20), (4, 12), (0, 4)]
  extra = {"pos_log_q_BxL": weight} if corrected else {}
  if mixed:
    extra.update(extra_emb_NxD=table[extra_ids], extra_ids_N=extra_ids, extra_log_q_N=extra_log_q)
  got = loss.in_batch_softmax_loss(out, table[label], weight, mask, row_mask, label, hits, **extra, levels=levels)
  want = naive(out, table, label, weight, mask, row_mask, extra_ids if mixed else None,
               extra_log_q if mixed else None, hits, pos_log_q=weight if corrected else None)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("real", [0, 1, 2])
def test_few_real_slots_and_no_row_mask(real):
  """With 0, 1 or 2 real slots and no row_mask: the loops' mean over the real slots (0 for
  none, not NaN), for the full softmax and the in-batch loss."""
  rng = np.random.default_rng(real)
  out = rng.normal(size=(B, L, D)).astype(np.float32)
  table = rng.normal(size=(I, D)).astype(np.float32)
  label = rng.integers(1, I, (B, L)).astype(np.int32)
  weight = np.log(rng.uniform(1e-3, 0.5, (B, L))).astype(np.float32)
  mask = np.zeros((B, L), np.float32)
  mask[[0, 2][:real], L - 1] = 1.0
  ones = np.ones(B, np.float32)
  full = float(loss.full_softmax_loss(out, table, label, mask))
  in_batch = float(loss.in_batch_softmax_loss(out, table[label], weight, mask))
  if not real:
    assert full == 0.0 and in_batch == 0.0
    return
  want_full = 0.0
  for b, l in zip(*np.nonzero(mask)):
    logits = table[1:].astype(np.float64) @ out[b, l].astype(np.float64)
    top = logits.max()
    want_full += top + math.log(np.exp(logits - top).sum()) - logits[label[b, l] - 1]
  np.testing.assert_allclose(full, want_full / real, rtol=1e-5)
  np.testing.assert_allclose(in_batch, naive(out, table, label, weight, mask, ones), rtol=1e-5)


@pytest.mark.parametrize("distribution, alpha, share", [("uniform", 1.0, 0.5), ("popularity", 1.0, 0.5),
                                                         ("popularity", 0.5, 0.5), ("mix", 0.75, 0.3),
                                                         ("mix", 0.75, 0.0), ("mix", 0.75, 1.0)])
def test_negative_log_q_is_the_proposal(distribution, alpha, share):
  """negative_log_q against the float64 proposal: uniform over 1..I-1, popularity^alpha over
  the clicked items, or their mix (shares 0 and 1 included: all popularity, all uniform)."""
  from jaxrec.config import LossConfig
  from jaxrec.step import negative_log_q
  counts = np.array([0, 50, 20, 20, 5, 0, 3, 1, 1], np.float64)
  with np.errstate(divide="ignore"):
    log_q_I = np.maximum(np.log(counts / counts.sum()), -1e4).astype(np.float32)
  loss = LossConfig(kind="mixed", negative_distribution=distribution, negative_alpha=alpha,
                    negative_uniform_share=share)
  got = np.exp(np.asarray(negative_log_q(jnp.asarray(log_q_I), loss, len(counts)), np.float64))
  uniform = np.r_[0.0, np.full(len(counts) - 1, 1 / (len(counts) - 1))]
  powered = np.where(counts > 0, counts ** alpha, 0.0)
  popularity = powered / powered.sum()
  want = {"uniform": uniform, "popularity": popularity, "mix": share * uniform + (1 - share) * popularity}[distribution]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
