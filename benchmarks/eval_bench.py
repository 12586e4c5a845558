"""Full-ranking evaluation throughput: `metrics.evaluate_ranks` and the model's user vectors.

  python -m benchmarks.eval_bench --users 22000 --items 12000 --dim 64
  python -m benchmarks.eval_bench --users 300 --items 500  # a smoke test

Random user/item embeddings, targets and histories (1 to --max_history items). Each
ranking time is compared with the matmul floor: the U x I x D score matmul at the
XLA float32 matmul ceiling, measured in the same run. Every timed call follows one
warm-up call of the same shapes (compilation excluded). Run on a quiet machine.
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from jaxrec import click_log
from jaxrec import clicks
from jaxrec import evaluate
from jaxrec import metrics
from jaxrec.model import ModelConfig, Seq2Seq, init_params

FLAGS = flags.FLAGS
flags.DEFINE_integer("users", 22000, "Users.")
flags.DEFINE_integer("items", 12000, "Item table rows (row 0 is padding).")
flags.DEFINE_integer("dim", 64, "Embedding size.")
flags.DEFINE_integer("max_history", 30, "History items per user: uniform in [1, max_history].")
flags.DEFINE_list("block_sizes", ["256", "1024", "4096"], "User block sizes of evaluate_ranks to time.")
flags.DEFINE_integer("item_block", metrics.DEFAULT_ITEM_BLOCK, "Items per block of evaluate_ranks.")
flags.DEFINE_integer("seq_length", 70, "Model part: input length.")
flags.DEFINE_integer("model_batch", 1024, "Model part: users per call of the encoder.")
flags.DEFINE_integer("matmul_n", 2048, "Size of the square matmul that measures the FLOP ceiling.")
flags.DEFINE_string("markdown_out", None, "File whose `eval` section gets the tables; '' writes none. "
                    "Default: BENCHMARKS.md.")


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def ranking_rows(ceiling_gflops: float):
  """One row per user block size: seconds, users/s, multiple of the matmul floor."""
  users, items, dim = FLAGS.users, FLAGS.items, FLAGS.dim
  rng = np.random.default_rng(0)
  user_emb = rng.standard_normal((users, dim), dtype=np.float32)
  item_emb = rng.standard_normal((items, dim), dtype=np.float32)
  targets = rng.integers(1, items, users).astype(np.int32)
  lengths = rng.integers(1, FLAGS.max_history + 1, users)
  indptr = np.concatenate([[0], np.cumsum(lengths)])
  history = metrics.padded_histories(indptr, rng.integers(1, items, indptr[-1]))
  floor_s = 2 * users * items * dim / (ceiling_gflops * 1e9)
  item_blocks, block = metrics.even_blocks(items, FLAGS.item_block)  # as metrics.target_ranks
  rows, reference = [], None
  for size in map(int, FLAGS.block_sizes):
    def call(n=users):
      return metrics.evaluate_ranks(user_emb[:n], item_emb, targets[:n], history[:n], block_size=size,
                                    item_block=FLAGS.item_block)
    compile_s, _ = _timed(lambda: call(min(size, users)))
    seconds, ranks = _timed(call)
    if reference is None:
      reference = ranks
    assert np.array_equal(ranks, reference), "ranks differ between block sizes"
    padded = -(-users // size) * size
    # Each item block's matmul also scores the block's own target rows (bs extra columns).
    work = padded * item_blocks * (block + size) / (users * items)
    rows.append((f"{size:,}", f"{compile_s:.2f}", f"{seconds:.3f}", f"{users / seconds:,.0f}",
                 f"{seconds / floor_s:.1f}x", f"{work:.2f}"))
  return rows, floor_s, history.shape[1], _count_pass_seconds(user_emb, item_emb, int(FLAGS.block_sizes[0]))


def _count_pass_seconds(user_emb, item_emb, size: int) -> float:
  """The least any blocked ranking can cost here: the same blocked matmul, and one pass that
  compares every score with a threshold and counts (no masks, no history, no targets).
  XLA's CPU matmul writes each score block to memory; the count reads it back once."""
  import jax.numpy as jnp
  users, dim = user_emb.shape
  item_blocks, block = metrics.even_blocks(len(item_emb), FLAGS.item_block)
  items = jnp.asarray(np.pad(item_emb, ((0, item_blocks * block - len(item_emb)), (0, 0))))
  padded = jnp.asarray(np.pad(user_emb, ((0, -(-users // size) * size - users), (0, 0))).reshape(-1, size, dim))

  def user_block(u_UxD):
    def item_block(b, count_U):
      scores_UxB = u_UxD @ jax.lax.dynamic_slice_in_dim(items, b * block, block).T
      return count_U + jnp.sum(scores_UxB >= 0.0, axis=1, dtype=jnp.int32)
    return jax.lax.fori_loop(0, item_blocks, item_block, jnp.zeros((size,), jnp.int32))

  fn = jax.jit(lambda u: jax.lax.map(user_block, u))
  fn(padded).block_until_ready()
  return min(_timed(lambda: fn(padded).block_until_ready())[0] for _ in range(3))


def model_rows(ceiling_gflops: float):
  """The encoder part: user vectors of every user from a freshly initialised SPEC model.

  Two histories: 1 to --max_history clicks, as ranked above (`user_vectors` runs short
  users at short padded lengths), and 2L clicks (every block at the full length L).
  Each full call follows a warm-up full call that compiles every length.
  """
  users, items, length, batch = FLAGS.users, FLAGS.items, FLAGS.seq_length, FLAGS.model_batch
  config = ModelConfig(num_items=items, seq_length=length, hidden_size=FLAGS.dim)
  params = init_params(config, jax.random.key(0))
  rng = np.random.default_rng(1)
  all_users = np.arange(users)
  user_ids = np.array([f"u{u}" for u in range(users)])
  item_ids = np.array([""] + [f"i{i}" for i in range(1, items)])
  fn = jax.jit(lambda p, x: Seq2Seq(config).apply({"params": p}, x, method=Seq2Seq.user_vectors))
  cost = fn.lower(params, np.zeros((batch, length), np.int32)).cost_analysis()
  full_gflop = -(-users // batch) * float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]) / 1e9
  rows = []
  for name, lengths in ((f"1-{FLAGS.max_history} clicks", rng.integers(1, FLAGS.max_history + 1, users)),
                        (f"{2 * length} clicks (all at L={length})", np.full(users, 2 * length))):
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    log = clicks.ClickLog(user_ids, item_ids, indptr, rng.integers(1, items, indptr[-1]).astype(np.int32))

    def call():
      return evaluate.user_vectors(params, config, log, all_users, indptr[1:], batch)
    compile_s, _ = _timed(call)
    seconds, vectors = _timed(call)
    assert vectors.shape == (users, FLAGS.dim)
    at_full = lengths.min() >= length
    rows.append((name, f"{users:,}", f"{compile_s:.2f}", f"{seconds:.3f}", f"{users / seconds:,.0f}",
                 f"{full_gflop:.1f}" if at_full else "-",
                 f"{100 * full_gflop / seconds / ceiling_gflops:.1f}%" if at_full else "-"))
  return rows


def main(argv):
  del argv
  ceiling = common.jax_matmul_gflops(FLAGS.matmul_n)
  rank_rows, floor_s, history_width, count_pass_s = ranking_rows(ceiling)
  encoder = model_rows(ceiling)
  users, items, dim = FLAGS.users, FLAGS.items, FLAGS.dim
  markdown = "\n".join([
      "## Evaluation", "",
      f"`{common.command_line('benchmarks.eval_bench')}`",
      f"Machine: {common.machine_line()}; {jax.devices()[0].device_kind}, jax {jax.__version__}.",
      f"{users:,} users x {items:,} items x {dim} dims, random normal; histories of 1-{FLAGS.max_history} "
      f"items (padded width {history_width}); item block {FLAGS.item_block:,}.",
      f"Matmul floor: 2*U*I*D = {2 * users * items * dim / 1e9:.2f} GFLOP at {ceiling:.1f} GFLOP/s (XLA float32 "
      f"{FLAGS.matmul_n}^3 matmul, this run) = {floor_s:.3g} s. Work computed / needed: the score matmul "
      "columns actually multiplied (whole user and item blocks, plus each block's target rows) over U*I.",
      "",
      common.markdown_table(["`evaluate_ranks` user block", "warm-up s (compiles)", "seconds", "users/s",
                             "x matmul floor", "work computed / needed"], rank_rows),
      "",
      f"What limits it: the same blocked matmul followed by one bare compare-and-count pass over its scores "
      f"(user block {FLAGS.block_sizes[0]}, no masks, history or targets) takes {count_pass_s:.3f} s, "
      f"{count_pass_s / floor_s:.1f}x the floor, in this run: with D = {dim} the matmul does only {dim // 2} "
      "FLOP per byte of scores it writes, XLA's CPU matmul cannot fuse the count, so every score is written "
      "and read back once, and that traffic costs about as much as the FLOPs.",
      "",
      f"Model part: `evaluate.user_vectors` of a freshly initialised SPEC model (seq_length "
      f"{FLAGS.seq_length}, hidden {dim}, 2 heads, 2 layers), {FLAGS.model_batch:,} users per call; the "
      "first full call (compiles every padded length) is not timed. GFLOP: XLA's `cost_analysis()` of the "
      "encoder call at full length, times the calls (shown where every block runs at full length).",
      "",
      common.markdown_table(["histories", "users", "first call s (compiles)", "seconds", "users/s", "GFLOP",
                             "% of matmul ceiling"], encoder),
      "",
      f"Peak RSS of the whole run: {common.peak_rss_mib():.0f} MiB.",
  ])
  print(markdown)
  markdown_out = common.BENCHMARKS_MD if FLAGS.markdown_out is None else FLAGS.markdown_out
  if markdown_out:
    common.update_section("eval", markdown, markdown_out)


if __name__ == "__main__":
  app.run(main)
