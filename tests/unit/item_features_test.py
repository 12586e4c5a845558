"""Item side features: the readers, the rows the model embeds, and the model's item vectors
checked against float64 numpy (id vector + mean of each field's value vectors)."""

import dataclasses
import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec import click_log
from jaxrec import item_features
from jaxrec.config import FeaturesConfig, LossConfig, ModelConfig
from jaxrec.errors import InputError
from jaxrec.input_pipeline import Batch
from jaxrec.model import Seq2Seq, init_params
from jaxrec.step import loss_fn


def read(path, **kw):
  return item_features.read(FeaturesConfig(item_features=str(path), **kw))


def as_dict(table):
  return {item: tuple(set(table.values[f][k]) for f in range(len(table.fields)))
          for k, item in enumerate(table.item_ids.tolist())}


def test_text_format_as_the_s3rec_files_are(tmp_path):
  path = tmp_path / "attrs.txt"
  path.write_text("1 a173 a1 a162\n2 a1\n\n3\n1 a1 a162 a173\n")  # item 1 twice, values reordered
  table = read(path)
  assert table.fields == ("values",)
  assert as_dict(table) == {"1": ({"a173", "a1", "a162"},), "2": ({"a1"},), "3": (set(),)}


def test_compressed_text(tmp_path):
  path = tmp_path / "attrs.txt.gz"
  path.write_bytes(gzip.compress(b"i1 x y\ni2 z\n"))
  assert as_dict(read(path)) == {"i1": ({"x", "y"},), "i2": ({"z"},)}


@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_csv_fields_and_several_values_a_cell(tmp_path, delimiter):
  path = tmp_path / "items.csv"
  rows = [["sku", "brand", "category"], ["p1", "acme", "shoes|running"], ["p2", "", "NULL"], ["p3", "zeta", "hats"]]
  path.write_text("\n".join(delimiter.join(r) for r in rows) + "\n")
  table = read(path, feature_item_col="sku")
  assert table.fields == ("brand", "category")
  assert as_dict(table) == {"p1": ({"acme"}, {"shoes", "running"}), "p2": (set(), set()), "p3": ({"zeta"}, {"hats"})}


def test_csv_value_separator_is_a_flag(tmp_path):
  path = tmp_path / "items.csv"
  path.write_text('item,tags\np1,"a;b;c"\n')
  assert as_dict(read(path, feature_separator=";")) == {"p1": ({"a", "b", "c"},)}


def test_parquet_list_and_scalar_columns_and_directories(tmp_path):
  table = pa.table({"item": ["p1", "p2", "p3"], "brand": ["acme", None, "zeta"],
                    "tags": [["x", "y"], [], None], "year": [2020, 2021, 2020]})
  pq.write_table(table.slice(0, 2), tmp_path / "part-0.parquet")
  pq.write_table(table.slice(2), tmp_path / "part-1.parquet")
  (tmp_path / "_SUCCESS").write_text("")
  read_back = read(tmp_path)
  assert read_back.fields == ("brand", "tags", "year")
  assert as_dict(read_back) == {"p1": ({"acme"}, {"x", "y"}, {"2020"}), "p2": (set(), set(), {"2021"}),
                                "p3": ({"zeta"}, set(), {"2020"})}


@pytest.mark.parametrize("name, content, message", [
    ("f.txt", b"", "f.txt: file is empty"),
    ("f.txt", b"1 a\n1 b\n", "f.txt:2: item '1' again with other values than on line 1"),
    ("f.csv", b"item,brand\n1,x\n1,y\n", "f.csv:3: item '1' again with other values than on line 2"),
    ("f.csv", b"sku,brand\n1,x\n", "f.csv:1: no column 'item' (--feature_item_col)"),
    ("f.csv", b"item,brand\n,x\n", "f.csv:2: no item id"),
    ("f.npz", b"xx", "unknown format"),
    ("f.txt", b"1\n2\n", "f.txt: no item has a feature value"),
])
def test_bad_tables_raise_one_line(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    read(path)
  assert "\n" not in str(e.value)


def test_parquet_missing_column(tmp_path):
  pq.write_table(pa.table({"sku": ["1"], "brand": ["x"]}), tmp_path / "f.parquet")
  with pytest.raises(InputError, match=r"no column 'item' \(--feature_item_col\); it has sku, brand"):
    read(tmp_path / "f.parquet")


def test_rows_cold_items_and_the_log_items_without_features(tmp_path):
  path = tmp_path / "attrs.txt"
  path.write_text("b x y\nc y\nnew1 z\nnew2 x z\n")
  log = click_log.ClickLog(np.array(["u1", "u2"]), np.array(["", "a", "b", "c"]), np.array([0, 2, 4]),
                           np.array([1, 2, 2, 3], np.int32))
  table = read(path)
  grown, cold = item_features.with_cold_items(log, table)
  assert cold == 2 and grown.item_ids.tolist() == ["", "a", "b", "c", "new1", "new2"]
  assert np.array_equal(grown.items, log.items)  # the clicks keep their rows
  rows = item_features.rows(table, grown.item_ids, np.bincount(grown.items, minlength=grown.num_items) > 0)
  assert rows.vocab[0].tolist() == ["x", "y", "z"] and rows.sizes == (4,)
  values = [sorted(rows.vocab[0][v - 1] for v in row if v) for row in rows.values[0]]
  assert values == [[], [], ["x", "y"], ["y"], ["z"], ["x", "z"]]  # padding, a (no features), b, c, new1, new2
  assert rows.warm.tolist() == [True, True, True, True, False, False]
  assert "2 items only the table names (cold: added to the catalog), 1 clicked items without features" in \
      item_features.describe(table, log.item_ids, cold)
  saved = tmp_path / "features.npz"
  item_features.save(rows, str(saved))
  assert item_features.load(str(saved)).fingerprint() == rows.fingerprint()


# ----------------------------------------------------------------------------- the model


def random_rows(rng, num_items, sizes, width, cold_share=0.3):
  values = []
  for n in sizes:
    matrix = rng.integers(0, n, size=(num_items, width)).astype(np.int32)
    matrix[rng.random((num_items, width)) < 0.3] = 0  # items with fewer values, some with none
    matrix[0] = 0
    values.append(matrix)
  warm = rng.random(num_items) >= cold_share
  warm[0] = True
  vocab = tuple(np.array([f"v{i}" for i in range(1, n)]) for n in sizes)
  return item_features.ItemFeatureRows(tuple(f"f{i}" for i in range(len(sizes))), vocab, tuple(values), warm)


def model_with(rows, num_items, share, **kw):
  config = ModelConfig(num_items=num_items, seq_length=6, hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                       share_embeddings=share, feature_sizes=rows.sizes, item_features=rows, **kw)
  return Seq2Seq(config)


def reference_table(params, rows, id_name, prefix, keep=None):
  """float64: warm (and kept) rows' id vectors plus per field the mean of the values' vectors."""
  ids = np.asarray(params[id_name]["embedding"], np.float64)
  keep = rows.warm if keep is None else rows.warm & keep
  out = np.where(keep[:, None], ids, 0.0)
  for f, values in enumerate(rows.values):
    table = np.asarray(params[f"{prefix}{f}"]["embedding"], np.float64)
    for i in range(len(values)):
      picked = [table[v] for v in values[i] if v > 0]
      if picked:
        out[i] += np.mean(picked, axis=0)
  return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.booleans(), fields=st.integers(1, 3), width=st.integers(1, 5))
def test_item_vectors_are_id_plus_pooled_features_in_float64(seed, share, fields, width):
  rng = np.random.default_rng(seed)
  num_items = int(rng.integers(3, 40))
  rows = random_rows(rng, num_items, tuple(int(n) for n in rng.integers(2, 12, size=fields)), width)
  model = model_with(rows, num_items, share)
  params = init_params(model.config, jax.random.key(seed))
  out_name, out_prefix = ("item_embeddings", "feature_") if share else ("outputs_embedding", "output_feature_")
  keep = rng.random(num_items) < 0.5
  for method, id_name, prefix in ((Seq2Seq.input_table, "item_embeddings", "feature_"),
                                  (Seq2Seq.output_table, out_name, out_prefix)):
    for k in (None, keep):
      got = model.apply({"params": params}, None if k is None else jnp.asarray(k), method=method)
      np.testing.assert_allclose(got, reference_table(params, rows, id_name, prefix, k), rtol=1e-5, atol=1e-7)


def test_cold_items_vectors_depend_only_on_their_features():
  rng = np.random.default_rng(0)
  rows = random_rows(rng, 30, (7, 5), 3, cold_share=0.5)
  model = model_with(rows, 30, share=False)
  params = init_params(model.config, jax.random.key(0))
  cold = ~rows.warm
  cold[0] = False
  changed = jax.tree.map(lambda x: x, params)
  for name in ("item_embeddings", "outputs_embedding"):  # every id vector changed
    changed[name] = {"embedding": params[name]["embedding"] + 1.0}
  for method in (Seq2Seq.input_table, Seq2Seq.output_table):
    before = np.asarray(model.apply({"params": params}, method=method))
    after = np.asarray(model.apply({"params": changed}, method=method))
    assert np.array_equal(before[cold], after[cold])
    assert not np.any(np.all(before[rows.warm] == after[rows.warm], axis=1))  # warm ones moved
  # ... and a cold item's features do move it: two cold items with the same values coincide.
  a, b = np.flatnonzero(cold)[:2]
  same = dataclasses.replace(rows, values=tuple(v.copy() for v in rows.values))
  for v in same.values:
    v[b] = v[a]
  table = np.asarray(model_with(same, 30, share=False).apply({"params": params}, method=Seq2Seq.output_table))
  np.testing.assert_array_equal(table[a], table[b])


def test_features_without_values_train_exactly_as_the_id_model():
  """Every row featureless, warm, no id dropout: the feature path adds exact zeros, so the loss
  and the id tables' gradients are bit-identical to the model without features."""
  num_items = 20
  rows = item_features.ItemFeatureRows(("f0",), (np.array(["v1", "v2"]),), (np.zeros((num_items, 2), np.int32),),
                                       np.ones(num_items, bool))
  with_features = model_with(rows, num_items, share=False, id_dropout=0.0)
  plain = Seq2Seq(dataclasses.replace(with_features.config, feature_sizes=(), item_features=None))
  params = init_params(with_features.config, jax.random.key(1))
  plain_params = {k: v for k, v in params.items() if not k.startswith(("feature_", "output_feature_"))}
  assert set(plain_params) == set(init_params(plain.config, jax.random.key(1)))
  rng = np.random.default_rng(1)
  ids = rng.integers(0, num_items, size=(4, 6)).astype(np.int32)
  ids[:, :2] = 0
  labels = rng.integers(1, num_items, size=ids.shape).astype(np.int32)  # padded slots: negatives, as batches have
  batch = Batch(jnp.asarray(ids), jnp.asarray(labels), jnp.ones(ids.shape, jnp.float32), jnp.ones(4, jnp.float32))
  for loss in (LossConfig(), LossConfig(kind="full")):
    a, ga = jax.value_and_grad(loss_fn)(params, with_features, batch, jax.random.key(2), loss)
    b, gb = jax.value_and_grad(loss_fn)(plain_params, plain, batch, jax.random.key(2), loss)
    assert np.asarray(a) == np.asarray(b)
    for name in plain_params:
      jax.tree.map(np.testing.assert_array_equal, ga[name], gb[name])


def test_id_dropout_leaves_the_same_items_out_on_both_sides():
  rng = np.random.default_rng(3)
  rows = random_rows(rng, 50, (6,), 2, cold_share=0.0)
  model = model_with(rows, 50, share=False, id_dropout=0.5)
  params = init_params(model.config, jax.random.key(0))
  seen = {}

  def spy(method):
    original = getattr(Seq2Seq, method)
    def wrapped(self, keep_I=None):
      seen[method] = None if keep_I is None else np.asarray(keep_I)
      return original(self, keep_I)
    return wrapped

  ids = np.tile(np.arange(1, 7, dtype=np.int32), (2, 1))
  batch = Batch(jnp.asarray(ids), jnp.asarray(ids), jnp.ones(ids.shape, jnp.float32), jnp.ones(2, jnp.float32))
  original = (Seq2Seq.input_table, Seq2Seq.output_table)
  try:
    Seq2Seq.input_table, Seq2Seq.output_table = spy("input_table"), spy("output_table")
    with jax.disable_jit():
      loss_fn(params, model, batch, jax.random.key(5), LossConfig())
  finally:
    Seq2Seq.input_table, Seq2Seq.output_table = original
  keep_in, keep_out = seen["input_table"], seen["output_table"]
  assert keep_in is not None and np.array_equal(keep_in, keep_out)
  assert 0.3 < keep_in.mean() < 0.7  # about half the ids dropped
