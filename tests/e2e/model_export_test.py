"""The portable artifact (--mode=export_model) loads without jaxrec, in JAX and in onnxruntime,
and gives the user vectors that export writes."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# The `onnx` extra is optional: its tests skip where it is not installed, and fail instead
# where JAXREC_REQUIRE_EXTRAS=1 (CI, which installs it). Only a missing package counts as
# not installed: one that is there but fails to import fails the tests that use it.
ONNX_MISSING = [name for name in ("jax2onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
REQUIRE_EXTRAS = os.environ.get("JAXREC_REQUIRE_EXTRAS") == "1"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--data_format=synthetic --synthetic_users=200 --synthetic_items=80 --hidden_size=16 "
        "--num_hidden_layers=2 --feed_forward_size=32 --seq_length=12 --batch_size=32 --num_epochs=1").split()

# Runs in a fresh interpreter: jax, numpy and onnxruntime only, never jaxrec.
LOADER = r"""
import json, sys
import numpy as np
directory, ids_path, runtime = sys.argv[1:]
ids = np.load(ids_path)
if runtime == "jax":
  import jax
  exported = jax.export.deserialize(open(f"{directory}/user_tower.jax", "rb").read())
  out = np.concatenate([np.asarray(exported.call(ids[:3])), np.asarray(exported.call(ids[3:]))])
else:
  import onnxruntime
  session = onnxruntime.InferenceSession(f"{directory}/user_tower.onnx")
  out = np.concatenate([session.run(["user_vectors"], {"ids": ids[:5]})[0],
                        session.run(["user_vectors"], {"ids": ids[5:]})[0]])
assert not any(m == "jaxrec" or m.startswith("jaxrec.") for m in sys.modules), "jaxrec was imported"
np.save(ids_path + ".out.npy", out)
"""


def cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-m", "jaxrec.main", *args], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  return result


@pytest.fixture(scope="module", params=["ids", "features"])
def artifact(tmp_path_factory, request):
  """The artifact of a tiny model, with item ids only or with item features (10 cold items)."""
  root = tmp_path_factory.mktemp("artifact")
  workdir = str(root / "workdir")
  flags = [*TINY, f"--workdir={workdir}"]
  if request.param == "features":
    with open(root / "attrs.txt", "w") as f:
      f.writelines(f"i{i} a{i % 7} b{i % 3}\n" for i in range(90))
    flags.append(f"--item_features={root}/attrs.txt")
  cli(*flags)
  cli(*flags, "--mode=export")
  onnx = [] if ONNX_MISSING else ["--onnx"]
  cli(f"--workdir={workdir}", "--mode=export_model", *onnx)  # needs no data
  npz = np.load(os.path.join(workdir, "embeddings.npz"))
  # Each user's last 12 clicks as item rows + 1, left-padded with 0, as model.json says.
  ids = np.zeros((len(npz["user_ids"]), 12), np.int32)
  for u in range(len(ids)):
    rows = npz["visited_indices"][npz["visited_indptr"][u]:npz["visited_indptr"][u + 1]][-12:] + 1
    ids[u, 12 - len(rows):] = rows
  ids_path = str(root / "ids.npy")
  np.save(ids_path, ids)
  return os.path.join(workdir, "model"), ids_path, npz


def require_onnx_extra():
  if ONNX_MISSING:
    message = f"the onnx extra is not installed ({', '.join(ONNX_MISSING)} missing: pip install -e '.[onnx]')"
    if REQUIRE_EXTRAS:
      pytest.fail(message + "; JAXREC_REQUIRE_EXTRAS=1 requires it")
    pytest.skip(message)


@pytest.mark.parametrize("runtime", ["jax", "onnx"])
def test_artifact_gives_export_user_vectors_without_jaxrec(artifact, runtime):
  if runtime == "onnx":
    require_onnx_extra()
  directory, ids_path, npz = artifact
  subprocess.run([sys.executable, "-c", LOADER, directory, ids_path, runtime], check=True, timeout=300,
                 cwd="/", env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  out = np.load(ids_path + ".out.npy")
  assert out.dtype == np.float32 and out.shape == npz["user_emb"].shape
  np.testing.assert_allclose(out, npz["user_emb"], rtol=1e-4, atol=1e-5)


def test_artifact_holds_the_catalog_and_its_manifest(artifact):
  directory, _, npz = artifact
  items = np.load(os.path.join(directory, "items.npz"))
  assert len(items["item_ids"]) == (90 if "cold_items" in npz.files else 80)
  np.testing.assert_array_equal(items["item_ids"], npz["item_ids"])
  np.testing.assert_array_equal(items["item_emb"], npz["item_emb"])
  assert items["item_counts"].sum() > 0
  manifest = json.load(open(os.path.join(directory, "model.json")))
  assert manifest["step"] == int(npz["step"]) and manifest["vocab_fingerprint"] == str(npz["vocab_fingerprint"])
  assert manifest["model_config"]["seq_length"] == 12
