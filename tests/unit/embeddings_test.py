"""Tests for jaxrec.embeddings: loading and validating an exported .npz."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxrec import embeddings
from jaxrec import errors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_arrays(seed, num_users, num_items, dim, max_visits):
  """Random exported arrays; visits are drawn with replacement (so may repeat)."""
  rng = np.random.default_rng(seed)
  visits = rng.integers(0, max_visits + 1, num_users)
  indptr = np.concatenate([[0], np.cumsum(visits)])
  return dict(
      user_ids=np.array([f"user{u}" for u in range(num_users)]),
      user_emb=rng.standard_normal((num_users, dim), dtype=np.float32),
      item_ids=np.array([f"item-{j:05d}" for j in range(num_items)]),
      item_emb=rng.standard_normal((num_items, dim), dtype=np.float32),
      visited_indptr=indptr,
      visited_indices=rng.integers(0, num_items, indptr[-1]))


def test_load_round_trips_and_converts_dtypes(npz_file):
  arrays = make_arrays(0, 10, 300, 16, 3)
  path = npz_file(dict(arrays, user_emb=arrays["user_emb"].astype(np.float64),
                       visited_indptr=arrays["visited_indptr"].astype(np.int32)))
  emb = embeddings.load_embeddings(path)
  assert emb.user_emb.dtype == np.float32 and emb.visited_indptr.dtype == np.int64
  for name in embeddings.ARRAYS:
    np.testing.assert_array_equal(getattr(emb, name), arrays[name])


def test_shards_concatenate_to_the_whole(npz_file):
  emb = embeddings.load_embeddings(npz_file(make_arrays(1, 11, 50, 4, 5)))
  shards = [emb.shard(3, s) for s in range(3)]
  np.testing.assert_array_equal(np.concatenate([s.user_ids for s in shards]), emb.user_ids)
  for s in shards:
    np.testing.assert_array_equal(s.item_emb, emb.item_emb)
  lists = [s.visited_indices[s.visited_indptr[u]:s.visited_indptr[u + 1]].tolist()
           for s in shards for u in range(len(s.user_ids))]
  assert lists == [emb.visited_indices[emb.visited_indptr[u]:emb.visited_indptr[u + 1]].tolist()
                   for u in range(11)]


@pytest.mark.parametrize("change, message", [
    (lambda a: dict(a, visited_indptr=a["visited_indptr"][::-1]), "never decrease"),
    (lambda a: dict(a, visited_indptr=a["visited_indptr"][:-1]), "expected 11"),
    (lambda a: dict(a, visited_indices=a["visited_indices"][:-1]), "but visited_indices has"),
    (lambda a: dict(a, visited_indices=a["visited_indices"] + 300), "out of range"),
    (lambda a: dict(a, user_ids=a["user_ids"][:-1]), "user_emb has 10 rows but user_ids"),
    (lambda a: dict(a, item_emb=np.where(a["item_emb"] > 2.5, np.nan, a["item_emb"])),
     "item_emb has non-finite values"),
    (lambda a: dict(a, item_ids=np.char.add(a["item_ids"], ",")), "contains ','"),
    (lambda a: dict(a, user_ids=np.full(10, "same")), "user_ids has duplicates"),
    (lambda a: dict(a, user_emb=a["user_emb"].astype(int)), "must be a 2-D float"),
])
def test_load_rejects_bad_arrays(npz_file, change, message):
  arrays = make_arrays(0, 10, 300, 16, 3)
  path = npz_file(change(arrays))
  with pytest.raises(errors.InputError) as info:
    embeddings.load_embeddings(path)
  assert message in str(info.value) and path in str(info.value)


def test_load_rejects_non_npz(tmp_path):
  text = tmp_path / "emb.npz"
  text.write_text("not numpy\n")
  with pytest.raises(errors.InputError, match="not an .npz archive"):
    embeddings.load_embeddings(str(text))
  with pytest.raises(errors.InputError, match="is a directory"):
    embeddings.load_embeddings(str(tmp_path))


def test_import_needs_neither_jax_nor_faiss(assert_imports_without):
  assert_imports_without("jaxrec.embeddings", ["jax", "flax", "faiss"])
