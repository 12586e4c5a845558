"""Mapping a log onto a model's vocabulary, against a plain dict reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec.clicks import ClickLog
from jaxrec import vocab


def log_of(sequences: dict) -> ClickLog:
  users = sorted(sequences)
  items = sorted({i for seq in sequences.values() for i in seq})
  dense = {item: d + 1 for d, item in enumerate(items)}
  indptr = np.concatenate([[0], np.cumsum([len(sequences[u]) for u in users])]).astype(np.int64)
  clicks = np.array([dense[i] for u in users for i in sequences[u]], np.int32)
  return ClickLog(np.array(users, dtype=str), np.array([""] + items, dtype=str), indptr, clicks)


@settings(deadline=None, max_examples=100)
@given(st.dictionaries(st.sampled_from([f"u{k}" for k in range(8)]),
                       st.lists(st.sampled_from([f"i{k}" for k in range(12)]), min_size=1, max_size=6),
                       min_size=1),
       st.permutations([f"i{k}" for k in range(12)]), st.integers(0, 12))
def test_align_keeps_raw_ids_and_skips_unknown_items(sequences, order, known):
  vocab_ids = np.array([""] + list(order[:known]), dtype=str)  # any order, as after a warm start
  aligned, alignment = vocab.align_to_vocab(log_of(sequences), vocab_ids)
  index = {item: row for row, item in enumerate(vocab_ids) if row}
  expect = {u: [i for i in seq if i in index] for u, seq in sequences.items()}
  expect = {u: seq for u, seq in expect.items() if seq}
  got = {str(u): [str(vocab_ids[i]) for i in aligned.items[aligned.indptr[r]:aligned.indptr[r + 1]]]
         for r, u in enumerate(aligned.user_ids)}
  assert got == expect
  np.testing.assert_array_equal(aligned.item_ids, vocab_ids)
  clicked = {i for seq in sequences.values() for i in seq}
  assert alignment.unknown_items == len(clicked - set(index))
  assert alignment.unknown_clicks == sum(i not in index for seq in sequences.values() for i in seq)
  assert alignment.dropped_users == len(sequences) - len(expect)
  assert alignment.missing_items == len(set(index) - clicked)


def test_fingerprint_follows_row_order():
  a = np.array(["", "x", "y"])
  assert vocab.vocab_fingerprint(a) == vocab.vocab_fingerprint(a.copy())
  assert vocab.vocab_fingerprint(a) != vocab.vocab_fingerprint(a[[0, 2, 1]])
