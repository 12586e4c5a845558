r"""jaxrec.recall's command line: every user's top-N unvisited items from an exported .npz.

  python -m jaxrec.recall --embeddings=emb.npz --top_n=50 --output=recall.tsv

Output, in the format --output's suffix names (recall_lists.ListWriter), a row per user, raw
ids best first: `.tsv`/`.txt` lines `user<TAB>item1,item2,...` (`item:score` pairs with
--with_scores); `.csv` (RFC 4180) columns user, items (and scores), each list one comma-joined
field; `.jsonl` objects {"user", "items"(, "scores")}; `.parquet` columns user, items (and
scores). Any other suffix: exit 2 before anything is read. With --num_shards=n
--shard_index=s a run handles the contiguous users [s*U//n, (s+1)*U//n). No JAX.
"""

from absl import app

from jaxrec import config_flags
from jaxrec import errors
from jaxrec import recall
from jaxrec.errors import InputError

PROG = recall.PROG


def main(argv) -> None:
  with errors.exit_on_input_error(PROG):
    if len(argv) > 1:
      raise InputError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need --)")
    sections = config_flags.sections_from_flags(config_flags.RECALL_SECTIONS)
    recall.recall_to_file(sections["recall"], sections["index"])


def run() -> None:
  config_flags.define_flags(config_flags.RECALL_SECTIONS)
  app.run(main, flags_parser=errors.flags_parser(PROG, config_flags.help_text(config_flags.RECALL_SECTIONS,
                                                                            "jaxrec.recall")))


if __name__ == "__main__":
  run()
