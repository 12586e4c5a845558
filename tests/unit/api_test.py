"""The README's Python API snippet runs as written, on a small CSV with string ids and times."""

import os
import re

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_snippet() -> str:
  text = open(os.path.join(REPO, "README.md")).read()
  block = text[text.index("<!-- api:begin -->"):text.index("<!-- api:end -->")]
  return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def write_clicks(path, users=120, items=40, seed=0):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    f.write("user,item,ts\n")
    for u in range(users):
      start = rng.integers(0, items)
      for t in range(int(rng.integers(3, 9))):  # each user walks the catalog: learnable
        f.write(f"user-{u},sku-{(start + t) % items},2026-01-{1 + t:02d}T08:00:00Z\n")


def test_the_readme_snippet_trains_exports_and_recalls(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  write_clicks(tmp_path / "clicks.csv")
  exec(compile(readme_snippet(), "README.md", "exec"), {})
  assert re.search(r"test NDCG@10 0\.\d{4}", capsys.readouterr().out)
  lines = open(tmp_path / "runs/notebook/recall.tsv").read().splitlines()
  assert len(lines) == 120
  user, items = lines[0].split("\t")
  assert user.startswith("user-") and len(items.split(",")) == 20
  assert all(i.startswith("sku-") for i in items.split(","))
  assert os.path.exists(tmp_path / "runs/notebook/_SUCCESS")
