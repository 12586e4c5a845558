"""The train step: optimizer, loss of a typed batch, and the dense and row-sparse Adam steps.

Pure functions of (state, batch); `train.Trainer` jits them with shardings. Shape key:
B batch rows, L padded length, S short length, D hidden size, I item table rows,
N sampled negatives, K table rows a sparse step touches.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxrec import packing
from jaxrec import masks
from jaxrec.input_pipeline import Batch, PackedBatch, SplitBatch
from jaxrec.loss import full_softmax_loss, in_batch_softmax_loss
from jaxrec.config import LossConfig, OptimizerConfig
from jaxrec.model import Seq2Seq, init_params


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def make_optimizer(config: OptimizerConfig, total_steps: int):
  """(optax transformation, learning-rate schedule) for a run of `total_steps`."""
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  if config.lr_schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(total_steps, warmup + 1))
  elif warmup:
    lr = optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup),
                               optax.constant_schedule(config.learning_rate)], [warmup])
  else:
    lr = optax.constant_schedule(config.learning_rate)
  adam = optax.adamw(lr, b2=config.b2, weight_decay=config.weight_decay)
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam), lr
  return adam, lr


def init_state(model: Seq2Seq, tx, rng: jax.Array, sparse_embedding_updates: bool = False,
               adapt=None) -> TrainState:
  """Step 0: fresh parameters (passed through `adapt`, e.g. a warm start's graft, if given)
  and fresh optimizer state (for the sparse step: the dense part's state and zero Adam
  moments per item table)."""
  params_rng, dropout_rng = jax.random.split(rng)
  params = init_params(model.config, params_rng)
  if adapt is not None:
    params = adapt(params)
  if not sparse_embedding_updates:
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), dropout_rng)
  names = set(model.table_names())
  dense = {k: v for k, v in params.items() if k not in names}
  moments = {n: (jnp.zeros_like(params[n]["embedding"]),) * 2 for n in names}
  return TrainState(jnp.zeros((), jnp.int32), params, (tx.init(dense), moments), dropout_rng)


def negative_log_q(item_log_q_I, loss: LossConfig, num_items: int) -> jnp.ndarray:
  """[I] log q: the proposal --negative_distribution draws items 1..I-1 from (row 0 never).

  popularity: q ∝ (count / total)^alpha over the clicked items (never-clicked items, whose
  logQ is floored at -1e4, get none); uniform: 1 / (I - 1); mix: s * uniform + (1 - s) *
  popularity. For uniform and popularity with alpha 1 this is the draw the mixed loss always
  made."""
  real_I = jnp.arange(num_items) > 0
  uniform_I = jnp.where(real_I, -jnp.log(num_items - 1.0), -jnp.inf)
  if loss.negative_distribution == "uniform":
    return uniform_I
  if loss.negative_distribution == "popularity" and loss.negative_alpha == 1:
    return item_log_q_I  # log(count / total), normalised already (floored items: exp() is 0)
  clicked_I = real_I & (item_log_q_I > -1e3)
  scaled_I = jnp.where(clicked_I, loss.negative_alpha * item_log_q_I, -jnp.inf)
  popularity_I = scaled_I - jax.nn.logsumexp(scaled_I)
  if loss.negative_distribution == "popularity":
    return popularity_I
  s = loss.negative_uniform_share
  return jnp.logaddexp(jnp.log(s) + uniform_I, jnp.log1p(-s) + popularity_I) if 0 < s < 1 else (
      uniform_I if s == 1 else popularity_I)


def sample_negatives(item_log_q_I, rng, loss: LossConfig, num_items: int):
  """--loss=mixed: (ids [N], logQ [N]) of N items shared by the batch, drawn from
  `negative_log_q`'s proposal with replacement.

  The logQ is the log of each item's expected count in the sample, N * q(item), as
  the in-batch candidates are corrected by B * p(item): the sources stay comparable.
  """
  n = loss.num_negatives
  if loss.negative_distribution == "uniform":  # the same draw as before the other proposals
    ids = jax.random.randint(rng, (n,), 1, num_items)
    log_q = jnp.full((n,), -jnp.log(num_items - 1.0))
  else:
    log_q_I = negative_log_q(item_log_q_I, loss, num_items)
    cdf = jnp.cumsum(jnp.exp(log_q_I))
    ids = jnp.searchsorted(cdf, jax.random.uniform(rng, (n,)) * cdf[-1], side="right")
    ids = jnp.clip(ids, 1, num_items - 1)
    log_q = log_q_I[ids]
  return ids, log_q + jnp.log(float(n))


def loss_fn(params, model: Seq2Seq, batch: Batch, dropout_rng=None, loss: LossConfig = LossConfig(),
            negatives=None, sparse=None):
  """The training loss of `batch`.

  `negatives`: (ids [N], logQ [N]) for --loss=mixed. `sparse`: (rows [K], {table name:
  gathered rows [K, D]}) standing in for the item tables, which are then not read.
  """
  variables = {"params": params}
  in_name, out_name = model.table_names()
  if sparse is None and model.config.feature_sizes:
    # Item vectors with features, built once for both sides; id dropout leaves the same items'
    # id vectors out of both, so that features alone learn to place an item.
    keep_I = None
    if dropout_rng is not None and model.config.id_dropout:
      keep_I = jax.random.bernoulli(jax.random.fold_in(dropout_rng, 1), 1.0 - model.config.id_dropout,
                                    (model.config.num_items,))
    in_table = model.apply(variables, keep_I, method=Seq2Seq.input_table)
    table = model.apply(variables, keep_I, method=Seq2Seq.output_table)
    lookup_in = lambda ids: jnp.take(in_table, ids, axis=0)
    lookup = lambda ids: jnp.take(table, ids, axis=0)
  elif sparse is None:
    table = model.apply(variables, method=Seq2Seq.output_table)
    lookup_in = lambda ids: None  # the model looks items up itself
    lookup = lambda ids: jnp.take(table, ids, axis=0)
  else:
    rows_K, tables = sparse
    local = lambda ids: jnp.searchsorted(rows_K, ids)
    lookup_in = lambda ids: jnp.take(tables[in_name], local(ids), axis=0)
    lookup = lambda ids: jnp.take(tables[out_name], local(ids), axis=0)

  def encode(ids_BxL, rng, segments_BxL=None):
    return model.apply(variables, ids_BxL, rng is None, lookup_in(ids_BxL), False, segments_BxL,
                       rngs=None if rng is None else {"dropout": rng}, method=Seq2Seq.encode)

  if isinstance(batch, PackedBatch):  # users packed into rows (packing.pack): slots restored
    packed_PxLxD = encode(batch.packed_ids, dropout_rng, batch.segments)
    groups, d = batch.unpack.shape[0], packed_PxLxD.shape[-1]
    index_GxTx1 = jnp.maximum(batch.unpack, 0)[..., None]
    plain_GxTxD = jnp.take_along_axis(packed_PxLxD.reshape(groups, -1, d), index_GxTx1, axis=1)
    plain_GxTxD = jnp.where(batch.unpack[..., None] >= 0, plain_GxTxD, 0.0)
    seq_out = plain_GxTxD.reshape(batch.input_ids.shape + (d,))
  elif isinstance(batch, SplitBatch):  # split by length (input_pipeline.split_by_length): rows restored
    rngs = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    short_BxSxD, long_BxLxD = encode(batch.short_ids, rngs[0]), encode(batch.long_ids, rngs[1])
    pad = long_BxLxD.shape[1] - short_BxSxD.shape[1]
    sorted_BxLxD = jnp.concatenate([jnp.pad(short_BxSxD, ((0, 0), (pad, 0), (0, 0))), long_BxLxD])
    seq_out = sorted_BxLxD[jnp.argsort(batch.order)]
  else:
    seq_out = encode(batch.input_ids, dropout_rng)
  padding = masks.padding_mask(batch.input_ids)
  if loss.kind == "full":
    return full_softmax_loss(seq_out, table, batch.label, padding, batch.row_mask, batch.slots,
                             loss.label_smoothing)
  hot_weight, extra = batch.hot_weight, {}
  if loss.kind == "mixed":
    ids, log_q = negatives
    extra = {"extra_emb_NxD": lookup(ids), "extra_ids_N": ids, "extra_log_q_N": log_q}
    hot_weight = hot_weight + jnp.log(jnp.float32(batch.label.shape[0]))  # log(B p)
  if loss.log_q == "corrected":
    extra["pos_log_q_BxL"] = batch.hot_weight
  levels = packing.loss_levels(batch.input_ids.shape[1], batch.loss_rows)
  return in_batch_softmax_loss(seq_out, lookup(batch.label), hot_weight, padding, batch.row_mask,
                               batch.label, loss.remove_accidental_hits, **extra, levels=levels)


def train_step(state: TrainState, batch: Batch, item_log_q_I, *, model: Seq2Seq, tx,
               loss: LossConfig = LossConfig()) -> tuple[TrainState, dict]:
  """One Adam step on the global batch; the dropout key is fold_in(rng, step)."""
  dropout_rng, sample_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  negatives = None
  if loss.kind == "mixed":
    negatives = sample_negatives(item_log_q_I, sample_rng, loss, model.config.num_items)
  loss_value, grads = jax.value_and_grad(loss_fn)(state.params, model, batch, dropout_rng, loss, negatives)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {"loss": loss_value, "grad_norm": optax.tree.norm(grads)}


def sparse_train_step(state: TrainState, batch: Batch, item_log_q_I, *, model: Seq2Seq, tx, lr,
                      b2: float, loss: LossConfig = LossConfig(), b1: float = 0.9,
                      eps: float = 1e-8) -> tuple[TrainState, dict]:
  """train_step with row-sparse ("lazy") Adam on the item tables.

  Only the table rows the batch touches (inputs, labels, sampled negatives) are
  gathered, differentiated and updated, with their own Adam moments; other rows and
  their moments stay as they are. The cost per step no longer grows with the catalog.
  `tx` updates the other (dense) parameters; its state is opt_state[0].
  """
  dropout_rng, sample_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  num_items = model.config.num_items
  negatives, ids = None, [batch.input_ids.ravel(), batch.label.ravel()]
  if loss.kind == "mixed":
    negatives = sample_negatives(item_log_q_I, sample_rng, loss, num_items)
    ids.append(negatives[0])
  ids = jnp.concatenate(ids)
  rows_K = jnp.unique(ids, size=ids.shape[0], fill_value=num_items)  # fill rows are dropped below
  names = tuple(sorted(set(model.table_names())))
  tables = {n: state.params[n]["embedding"] for n in names}
  rows = {n: tables[n].at[rows_K].get(mode="fill", fill_value=0.0) for n in names}
  dense = {k: v for k, v in state.params.items() if k not in names}

  def objective(dense, rows):
    params = {**dense, **{n: {"embedding": jax.lax.stop_gradient(tables[n])} for n in names}}
    return loss_fn(params, model, batch, dropout_rng, loss, negatives, (rows_K, rows))

  loss_value, (dense_grads, row_grads) = jax.value_and_grad(objective, argnums=(0, 1))(dense, rows)
  dense_opt, moments = state.opt_state
  updates, dense_opt = tx.update(dense_grads, dense_opt, dense)
  params = dict(optax.apply_updates(dense, updates))
  t = (state.step + 1).astype(jnp.float32)
  lr_t = lr(state.step)
  new_moments = {}
  for n in names:
    m, v = moments[n]
    g = row_grads[n]
    m_K = b1 * m.at[rows_K].get(mode="fill", fill_value=0.0) + (1 - b1) * g
    v_K = b2 * v.at[rows_K].get(mode="fill", fill_value=0.0) + (1 - b2) * g * g
    step_K = lr_t * (m_K / (1 - b1**t)) / (jnp.sqrt(v_K / (1 - b2**t)) + eps)
    params[n] = {"embedding": tables[n].at[rows_K].set(rows[n] - step_K, mode="drop")}
    new_moments[n] = (m.at[rows_K].set(m_K, mode="drop"), v.at[rows_K].set(v_K, mode="drop"))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=(dense_opt, new_moments))
  grad_norm = optax.tree.norm((dense_grads, row_grads))
  return new_state, {"loss": loss_value, "grad_norm": grad_norm}


