"""What pipelines write, read as the plain-Python reference reads it: separators told by the
header, compressed text, Spark's partitioned Parquet directories, pandas' float epoch times,
and null tokens refused at their file and line or dropped and counted (--nulls)."""

import bz2
import gzip
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrec import click_log
from jaxrec.errors import InputError

from arrow_log_test import as_dict, reference

# (user, item, time): string ids, epoch seconds; users' clicks out of time order in the file.
ROWS = [(f"u{u}", f"sku-{(u * 7 + t) % 13}", 1717200000 + 100 * u + 10 * ((t * 3) % 5))
        for u in range(12) for t in range(5)]
SEPARATORS = {"comma": ",", "tab": "\t", "semicolon": ";", "pipe": "|"}


def text(rows, sep=",", times=str) -> str:
  return "".join(sep.join([u, i, times(t)]) + "\n" for u, i, t in [("user", "item", "ts"), *rows])


def header_text(rows, sep=",", times=str) -> str:
  return sep.join(["user", "item", "ts"]) + "\n" + "".join(sep.join([u, i, times(t)]) + "\n" for u, i, t in rows)


@pytest.mark.parametrize("name", ["clicks.csv", "clicks.tsv", "clicks.txt", "clicks"])
@pytest.mark.parametrize("separator", sorted(SEPARATORS))
def test_the_separator_is_told_by_the_header_whatever_the_name(tmp_path, name, separator):
  # A tab-separated file with a header was read as pairs (the header a click), or split on commas.
  path = tmp_path / name
  path.write_text(header_text(ROWS, SEPARATORS[separator]))
  assert as_dict(click_log.read_click_log(str(path), time_col="ts")) == reference(ROWS)
  assert as_dict(click_log.read_click_log(str(path), "csv", time_col="ts", separator=separator)) == reference(ROWS)


def test_a_separator_named_by_flag_overrides_the_header(tmp_path):
  path = tmp_path / "odd.csv"  # commas inside ids, semicolons between fields
  rows = [(u, i.replace("-", ","), t) for u, i, t in ROWS]
  path.write_text(header_text(rows, ";"))
  assert as_dict(click_log.read_click_log(str(path), time_col="ts", separator="semicolon")) == reference(rows)
  with pytest.raises(InputError, match=r"odd.csv:1: no column 'user' \(--user_col\) in the header"):
    click_log.read_click_log(str(path), time_col="ts", separator="tab")


@pytest.mark.parametrize("suffix, compress", [
    (".gz", gzip.compress), (".bz2", bz2.compress), (".zst", None), ("", gzip.compress)])
def test_compressed_text_reads_as_the_plain_file(tmp_path, suffix, compress):
  # A gzip file failed as "NUL byte in a text file". The codec is told by the first bytes.
  raw = header_text(ROWS, "\t").encode()
  path = str(tmp_path / f"clicks.tsv{suffix}")
  if compress is None:
    with pa.output_stream(path, compression="zstd") as f:
      f.write(raw)
  else:
    open(path, "wb").write(compress(raw))
  assert as_dict(click_log.read_click_log(path, time_col="ts")) == reference(ROWS)
  pairs = str(tmp_path / f"pairs.txt{suffix or '.gz'}")
  open(pairs, "wb").write(gzip.compress("".join(f"{u} {i} {t}\n" for u, i, t in ROWS).encode()))
  assert as_dict(click_log.read_click_log(pairs)) == reference(ROWS)


def test_a_corrupt_compressed_file_is_named(tmp_path):
  path = tmp_path / "clicks.csv.gz"
  path.write_bytes(gzip.compress(b"user,item\nu,a\n" * 100)[:30])
  with pytest.raises(InputError, match=r"clicks.csv.gz: not a readable gzip file"):
    click_log.read_click_log(str(path))


def test_a_spark_directory_with_date_partitions_markers_and_checksums(tmp_path):
  root = tmp_path / "clicks"
  (root / "_temporary" / "0").mkdir(parents=True)
  (root / "_SUCCESS").write_bytes(b"")
  pq.write_table(pa.table({"user": ["junk"], "item": ["junk"], "ts": [0]}), root / "_temporary" / "0" / "p.parquet")
  days = {}
  for u, i, t in ROWS:
    days.setdefault(f"2026-12-0{1 + t % 3}", []).append((u, i, t))
  for day, rows in days.items():
    part = root / f"date={day}"
    part.mkdir()
    pq.write_table(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows], "ts": [r[2] for r in rows]}),
                   part / "part-00000-1f2e.c000.snappy.parquet")
    (part / ".part-00000-1f2e.c000.snappy.parquet.crc").write_bytes(b"\x00crc")
  assert as_dict(click_log.read_click_log(str(root), time_col="ts")) == reference(ROWS)
  # The partition key is a column too: clicks ordered by day, file order within one.
  by_day = [(u, i, f"2026-12-0{1 + t % 3}") for u, i, t in
            [r for day in sorted(days) for r in days[day]]]
  assert as_dict(click_log.read_click_log(str(root), time_col="date")) == reference(by_day)


@pytest.mark.parametrize("times", [lambda t: f"{t}.0", lambda t: f"{t + 0.25}"])
def test_float_epoch_times_as_pandas_writes_them(tmp_path, times):
  path = tmp_path / "pandas.csv"
  path.write_text(header_text(ROWS, ",", times))
  log = click_log.read_click_log(str(path), time_col="ts")
  assert as_dict(log) == reference(ROWS)


NULLS = ["", "NULL", "null", "NA", "NaN", "nan", "None", "N/A", " NULL "]


def with_null(column: int, token: str, at: int = 7):
  rows = [list(r) for r in ROWS]
  rows[at][column] = token
  return rows


def write_as(tmp_path, kind: str, rows) -> str:
  if kind == "parquet":
    path = str(tmp_path / "clicks.parquet")
    cell = lambda v: None if v == "" else v
    pq.write_table(pa.table({"user": [cell(r[0]) for r in rows], "item": [cell(r[1]) for r in rows],
                             "ts": [cell(str(r[2])) for r in rows]}), path)
    return path
  path = str(tmp_path / "clicks.csv")
  # A whitespace-only last line: Arrow refuses the file, the line-by-line reader reads it.
  open(path, "w").write(header_text([tuple(map(str, r)) for r in rows]) + ("  \n" if kind == "csv-lines" else ""))
  return path


@pytest.mark.parametrize("kind", ["csv", "csv-lines", "parquet"])
@pytest.mark.parametrize("column", [0, 1, 2])
@pytest.mark.parametrize("token", NULLS)
def test_a_null_is_refused_at_its_line_or_dropped_and_counted(tmp_path, capsys, kind, column, token):
  # NULL, NA and nan in the item column became three real items; an empty time was read as a
  # year of -1.15e15 and sorted first (or, written as floats, a traceback).
  rows = with_null(column, token)
  path = write_as(tmp_path, kind, rows)
  with pytest.raises(InputError) as e:
    click_log.read_click_log(path, time_col="ts")
  where = f"{path}: row {7 + 1}" if kind == "parquet" else f"{path}:{7 + 2}"
  assert str(e.value).startswith(f"{where}: ") and "a null; --nulls=drop leaves such clicks out" in str(e.value)
  log = click_log.read_click_log(path, time_col="ts", nulls="drop")
  kept = [tuple(r) for k, r in enumerate(rows) if k != 7]
  assert as_dict(log) == reference(kept)
  assert token.strip() not in {str(i) for i in log.item_ids[1:]} | {str(u) for u in log.user_ids}
  assert "left out 1 of 60 clicks with a null user, item or time (--nulls=drop)" in capsys.readouterr().err


@pytest.mark.parametrize("token", ["NULL", "NA"])
def test_pairs_files_refuse_null_tokens_too(tmp_path, token):
  path = tmp_path / "pairs.txt"
  path.write_text("".join(f"{u} {token if k == 4 else i} {t}\n" for k, (u, i, t) in enumerate(ROWS)))
  with pytest.raises(InputError, match=rf"pairs.txt:5: item id '{token}', a null"):
    click_log.read_click_log(str(path))
  assert as_dict(click_log.read_click_log(str(path), nulls="drop")) == reference(
      [r for k, r in enumerate(ROWS) if k != 4])


def test_numbers_among_dates_are_refused_not_read_as_years(tmp_path):
  path = tmp_path / "mixed.csv"
  rows = [(u, i, "2026-12-01T08:00:00Z") for u, i, _ in ROWS]
  rows[5] = (rows[5][0], rows[5][1], "17")
  path.write_text(header_text(rows))
  with pytest.raises(InputError, match=r"mixed.csv:7: timestamp '17' is not"):
    click_log.read_click_log(str(path), time_col="ts")
