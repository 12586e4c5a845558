"""The seq2seq encoder (SPEC sections 2-4): embeddings + causal self-attention layers.

The Flax module only composes the pure functions of `masks` and `attention`.
Shape key: B batch, L sequence length, D hidden size, I item table rows (0 = padding).
"""


import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec import attention
from jaxrec import filters
from jaxrec import masks
from jaxrec.config import ModelConfig


def position_ids(input_ids_BxL, order: str = "forward", segments_BxL=None) -> jnp.ndarray:
  """[B, L] int32 positions of the real (left-padded) items; padding slots get 0.

  forward: the first real item is 0, the next 1, ...; backward: the most recent is 0.
  Positions depend only on the real items, so outputs at real positions are the same
  at any padded length. With `segments_BxL` (packed rows: contiguous segments 1, 2, ...
  one per user, 0 on padding) each segment is numbered on its own, as if it were the
  only user of a left-padded row.
  """
  length = input_ids_BxL.shape[1]
  t_L = jnp.arange(length)
  if segments_BxL is None:
    if order == "forward":
      num_pad_B = length - jnp.sum(input_ids_BxL != 0, axis=1)
      pos_BxL = t_L[None, :] - num_pad_B[:, None]
    else:
      pos_BxL = jnp.broadcast_to(length - 1 - t_L, input_ids_BxL.shape)
  elif order == "forward":  # t minus the first slot of t's segment
    prv = jnp.pad(segments_BxL[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    pos_BxL = t_L[None, :] - jax.lax.cummax(jnp.where(segments_BxL != prv, t_L[None, :], 0), axis=1)
  else:  # the last slot of t's segment minus t
    nxt = jnp.pad(segments_BxL[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
    end_BxL = jax.lax.cummin(jnp.where(segments_BxL != nxt, t_L[None, :], length), axis=1, reverse=True)
    pos_BxL = end_BxL - t_L[None, :]
  return jnp.where(input_ids_BxL != 0, pos_BxL, 0).astype(jnp.int32)


class EncoderLayer(nn.Module):
  """Self-attention (+ optional feed-forward), each with residual and post-LayerNorm."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, bias_Bx1xLxL, deterministic: bool, last_only: bool = False, real_BxL=None):
    """[B, L, D], or [B, 1, D] for the last position only with `last_only` (user vectors).

    With encoder="bsarec" (needs `real_BxL`, the real positions), the attention branch is
    mixed with a causal low-pass filter branch as BSARec mixes its frequency filter:
    alpha * LayerNorm(low + beta^2 (x - low) + x) + (1 - alpha) * attention branch.
    """
    c = self.config
    init = nn.initializers.normal(c.initializer_range)
    dense = lambda size, name: nn.Dense(size, kernel_init=init, name=name)
    k, v = (dense(c.hidden_size, name)(x_BxLxD) for name in ("key", "value"))
    if c.encoder == "bsarec":
      gamma_D = nn.sigmoid(self.param("filter_decay", nn.initializers.zeros, (c.hidden_size,)))
      beta_D = self.param("filter_beta", nn.initializers.ones, (c.hidden_size,))
      low_BxLxD = filters.causal_lowpass(x_BxLxD, real_BxL, gamma_D)
    if last_only:  # keys and values still cover every position; queries only the last
      x_BxLxD, bias_Bx1xLxL = x_BxLxD[:, -1:], bias_Bx1xLxL[:, :, -1:]
    q = dense(c.hidden_size, "query")(x_BxLxD)
    use_dropout = not deterministic and c.attention_dropout_rate > 0
    rng = self.make_rng("dropout") if use_dropout else None
    context_BxLxD = attention.multi_head_attention(
        q, k, v, bias_Bx1xLxL, c.num_attention_heads, c.attention_dropout_rate, rng)
    h_BxLxD = dense(c.hidden_size, "attention_output")(context_BxLxD)
    h_BxLxD = nn.Dropout(c.hidden_dropout_rate)(h_BxLxD, deterministic)
    attended_BxLxD = nn.LayerNorm(c.layer_norm_epsilon, name="attention_norm")(h_BxLxD + x_BxLxD)
    if c.encoder == "bsarec":
      low_BxLxD = low_BxLxD[:, -x_BxLxD.shape[1]:]
      high_BxLxD = x_BxLxD - low_BxLxD
      f_BxLxD = nn.Dropout(c.hidden_dropout_rate)(low_BxLxD + beta_D[None, None, :] ** 2 * high_BxLxD,
                                                  deterministic)
      filtered_BxLxD = nn.LayerNorm(c.layer_norm_epsilon, name="filter_norm")(f_BxLxD + x_BxLxD)
      x_BxLxD = c.bsarec_alpha * filtered_BxLxD + (1.0 - c.bsarec_alpha) * attended_BxLxD
    else:
      x_BxLxD = attended_BxLxD
    if c.feed_forward_size:
      f_BxLxF = nn.gelu(dense(c.feed_forward_size, "feed_forward_in")(x_BxLxD))
      f_BxLxD = dense(c.hidden_size, "feed_forward_out")(f_BxLxF)
      f_BxLxD = nn.Dropout(c.hidden_dropout_rate)(f_BxLxD, deterministic)
      x_BxLxD = nn.LayerNorm(c.layer_norm_epsilon, name="feed_forward_norm")(f_BxLxD + x_BxLxD)
    return x_BxLxD


class Seq2Seq(nn.Module):
  """Item + position embeddings, `num_hidden_layers` encoder layers, an output item table."""
  config: ModelConfig

  def setup(self):
    c = self.config
    init = nn.initializers.normal(c.initializer_range)
    self.item_embeddings = nn.Embed(c.num_items, c.hidden_size, embedding_init=init)
    self.position_embeddings = nn.Embed(c.seq_length, c.hidden_size, embedding_init=init)
    if not c.share_embeddings:
      self.outputs_embedding = nn.Embed(c.num_items, c.hidden_size, embedding_init=init)
    # Item side features: a value table per field, on the output side too unless tables are tied.
    self.feature_embeddings = [nn.Embed(n, c.hidden_size, embedding_init=init, name=f"feature_{f}")
                               for f, n in enumerate(c.feature_sizes)]
    if not c.share_embeddings:
      self.output_feature_embeddings = [nn.Embed(n, c.hidden_size, embedding_init=init, name=f"output_feature_{f}")
                                        for f, n in enumerate(c.feature_sizes)]
    if c.embedding_layer_norm:
      self.embedding_norm = nn.LayerNorm(c.layer_norm_epsilon)
    self.embedding_dropout = nn.Dropout(c.hidden_dropout_rate)
    self.layers = [EncoderLayer(c, name=f"layer_{i}") for i in range(c.num_hidden_layers)]

  def encode(self, input_ids_BxL, deterministic: bool = True, item_vectors_BxLxD=None,
             last_only: bool = False, segments_BxL=None) -> jnp.ndarray:
    """seq_out [B, L, D]: the last layer's output at every position ([B, 1, D]: only the
    last position with `last_only`, whose last layer then computes only that query).

    `item_vectors_BxLxD`, if given, replaces the item-table lookup of `input_ids_BxL`
    (row-sparse training looks items up in a gathered slice of the table).
    `segments_BxL` (packed rows, packing.pack): each user's segment gets its own
    positions and attends only within itself, so its outputs are those it has alone.
    """
    if segments_BxL is not None and self.config.encoder != "spec":
      raise ValueError("packed rows need encoder=spec (the bsarec filter spans the whole row)")
    x_BxLxD = self.embed(input_ids_BxL, deterministic, item_vectors_BxLxD, segments_BxL)
    if segments_BxL is None:
      bias_Bx1xLxL = masks.attention_bias(input_ids_BxL)
    else:
      bias_Bx1xLxL = masks.segment_attention_bias(segments_BxL)
    for i, layer in enumerate(self.layers):
      x_BxLxD = layer(x_BxLxD, bias_Bx1xLxL, deterministic, last_only and i == len(self.layers) - 1,
                      input_ids_BxL != 0)
    return x_BxLxD

  def embed(self, input_ids_BxL, deterministic: bool, item_vectors_BxLxD=None, segments_BxL=None) -> jnp.ndarray:
    """[B, L, D]: item vectors + position embeddings (none on padding), optionally
    LayerNorm-ed per position, then dropout."""
    real_BxLx1 = (input_ids_BxL != 0)[..., None]
    pos_BxL = position_ids(input_ids_BxL, self.config.position_order, segments_BxL)
    pos_BxLxD = self.position_embeddings(pos_BxL)
    if item_vectors_BxLxD is None and self.config.feature_sizes:
      item_vectors_BxLxD = jnp.take(self.input_table(), input_ids_BxL, axis=0)
    elif item_vectors_BxLxD is None:
      item_vectors_BxLxD = self.item_embeddings(input_ids_BxL)
    x_BxLxD = item_vectors_BxLxD + jnp.where(real_BxLx1, pos_BxLxD, 0.0)
    if self.config.embedding_layer_norm:
      x_BxLxD = self.embedding_norm(x_BxLxD)
    return self.embedding_dropout(x_BxLxD, deterministic)

  def table_names(self) -> tuple:
    """Names of the item tables in the params: (input, output), the same name when tied."""
    return ("item_embeddings", "item_embeddings" if self.config.share_embeddings else "outputs_embedding")

  def output_table(self, keep_I=None) -> jnp.ndarray:
    """[I, D]: the candidate-side item vectors (also the vectors recall indexes)."""
    table = self.item_embeddings if self.config.share_embeddings else self.outputs_embedding
    if not self.config.feature_sizes:
      return table.embedding
    features = self.feature_embeddings if self.config.share_embeddings else self.output_feature_embeddings
    return self._with_features(table.embedding, features, keep_I)

  def input_table(self, keep_I=None) -> jnp.ndarray:
    """[I, D]: the vectors the encoder reads for each item row."""
    if not self.config.feature_sizes:
      return self.item_embeddings.embedding
    return self._with_features(self.item_embeddings.embedding, self.feature_embeddings, keep_I)

  def _with_features(self, ids_IxD, feature_tables, keep_I) -> jnp.ndarray:
    """An item's vector with features: its id vector (warm rows only, and of those only the
    rows `keep_I` keeps: id dropout) plus, per field, the mean of its values' vectors."""
    rows = self.config.item_features
    keep_I = jnp.asarray(rows.warm) if keep_I is None else jnp.asarray(rows.warm) & keep_I
    out_IxD = jnp.where(keep_I[:, None], ids_IxD, 0.0)
    for table, values_IxV in zip(feature_tables, rows.values):
      values_IxV = jnp.asarray(values_IxV)
      has_IxV = values_IxV > 0
      sum_IxD = jnp.einsum("iv,ivd->id", has_IxV.astype(ids_IxD.dtype), table(values_IxV))
      out_IxD = out_IxD + sum_IxD / jnp.maximum(has_IxV.sum(axis=1), 1)[:, None].astype(ids_IxD.dtype)
    return out_IxD

  def user_vectors(self, input_ids_BxL) -> jnp.ndarray:
    """[B, D]: the output at the last position, the most recent real item (left padding).

    Equals encode(...)[:, -1]; the last layer computes only that position's query.
    """
    return self.encode(input_ids_BxL, deterministic=True, last_only=True)[:, 0, :]

  def __call__(self, input_ids_BxL, label_BxL, deterministic: bool = True):
    """(seq_out [B, L, D], ids_emb [B, L, D]): the two sides of the lbm logits."""
    seq_out_BxLxD = self.encode(input_ids_BxL, deterministic)
    ids_emb_BxLxD = jnp.take(self.output_table(), label_BxL, axis=0)
    return seq_out_BxLxD, ids_emb_BxLxD


def init_params(config: ModelConfig, rng: jax.Array):
  """Parameters for `config`, from a typed PRNG key."""
  ids = jnp.ones((1, config.seq_length), jnp.int32)
  return Seq2Seq(config).init({"params": rng}, ids, ids)["params"]
