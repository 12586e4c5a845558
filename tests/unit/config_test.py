"""The configuration tree: flags generated from it, its checks, and the values a resumed run keeps."""

import glob
import os
import re

from absl import flags
import pytest

from jaxrec import api
from jaxrec import config
from jaxrec import config_flags
from jaxrec.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parsed(*argv, sections=config_flags.MAIN_SECTIONS) -> flags.FlagValues:
  fv = flags.FlagValues()
  config_flags.define_flags(sections, fv)
  fv(["prog", *argv])
  return fv


def test_no_flag_is_defined_outside_the_configuration_tree():
  for path in glob.glob(os.path.join(REPO, "jaxrec", "*.py")):
    if not path.endswith("config_flags.py"):
      assert not re.search(r"flags\.DEFINE", open(path).read()), path


def test_the_default_flags_are_the_default_tree():
  assert config_flags.from_flags(parsed()) == config.Config()
  fv = parsed(sections=config_flags.RECALL_SECTIONS)
  assert config_flags.sections_from_flags(config_flags.RECALL_SECTIONS, fv) == {"recall": config.RecallConfig(),
                                                                     "index": config.IndexConfig()}
  fv = parsed(sections=config_flags.SERVE_SECTIONS)
  assert config_flags.sections_from_flags(config_flags.SERVE_SECTIONS, fv)["serve"] == config.ServeConfig()


def test_flags_fill_their_fields_with_python_types():
  cfg = config_flags.from_flags(parsed("--dropout_rate=0.25", "--loss=full", "--eval_ks=5,10", "--bucket_lengths=8,16",
                                 "--allow_changed_flags=num_epochs", "--checkpoint_step=7", "--noynn_dots"))
  assert cfg.model.hidden_dropout_rate == 0.25 and cfg.loss.kind == "full"
  assert cfg.eval.eval_ks == (5, 10) and cfg.batching.bucket_lengths == (8, 16)
  assert cfg.run.allow_changed_flags == ("num_epochs",) and cfg.eval.checkpoint_step == 7
  assert cfg.batching.ynn_dots is False
  assert cfg == config.make(dropout_rate=0.25, loss="full", eval_ks=(5, 10), bucket_lengths=(8, 16),
                            allow_changed_flags=("num_epochs",), checkpoint_step=7, ynn_dots=False)


def test_a_bad_list_value_names_its_flag():
  with pytest.raises(InputError, match=r"--eval_ks=10,x: expected integers like 10,20,50"):
    config_flags.from_flags(parsed("--eval_ks=10,x"))


@pytest.mark.parametrize("values,message", [
    (dict(data_format="synthetic", data_path="clicks.csv"), "--data_path=clicks.csv: only for a file's --data_format"),
    (dict(num_negatives=64), "--num_negatives=64: only for --loss=mixed"),
    (dict(valid_from="2024-01-01"), "--valid_from=2024-01-01: only for --split=time"),
    (dict(bsarec_alpha=0.3), "--bsarec_alpha=0.3: only for --encoder=bsarec"),
    (dict(data_format="sequences", time_col="ts"), "--time_col=ts: only for --data_format=csv or parquet"),
    (dict(synthetic_users=10, data_path="x.txt"), "--synthetic_users=10: only for --data_format=synthetic"),
    (dict(init_checkpoints="latest"), "--init_checkpoints=latest: only for --init_from"),
    (dict(hidden_size=30, num_attention_heads=4), "--hidden_size=30 is not divisible by --num_attention_heads=4"),
    (dict(learning_rate=float("nan")), "--learning_rate=nan: must be positive"),
    (dict(seq_length=0), r"--seq_length=0: must be in \[1, inf\]"),
    (dict(layout="dense"), "--layout=dense: expected one of auto, packed, rows, plain"),
    (dict(holdout="none", patience=3), "--patience=3: needs validation"),
])
def test_settings_without_effect_or_out_of_bounds_are_refused_naming_the_flags(values, message):
  with pytest.raises(InputError, match=message):
    config.make(**values)


def test_settings_that_apply_are_accepted():
  config.make(data_format="synthetic", synthetic_users=10)
  config.make(loss="mixed", num_negatives=64)
  config.make(split="time", valid_from="2024-01-01", test_from="2024-02-01")
  config.make(encoder="bsarec", bsarec_alpha=0.3)
  config.make(init_from="runs/day1", init_checkpoints="latest")


def test_make_refuses_an_unknown_name_and_takes_whole_sections():
  with pytest.raises(InputError, match="hiden_size: not an option"):
    config.make(hiden_size=16)
  cfg = config.make(model=config.ModelConfig(hidden_size=32), num_hidden_layers=1)
  assert (cfg.model.hidden_size, cfg.model.num_hidden_layers) == (32, 1)


def test_the_values_a_resumed_run_keeps():
  # train_config.json's keys: a rename here would refuse to resume every existing workdir.
  assert set(config.Config().kept()) == {
      "seq_length", "hidden_size", "num_attention_heads", "num_hidden_layers", "feed_forward_size",
      "dropout_rate", "attention_dropout_rate", "share_embeddings", "embedding_layer_norm", "position_order",
      "encoder", "bsarec_alpha", "batch_size", "num_epochs", "learning_rate", "lr_schedule", "warmup_steps",
      "weight_decay", "grad_clip_norm", "loss", "remove_accidental_hits", "num_negatives",
      "negative_distribution", "log_q", "label_smoothing", "sparse_embedding_updates", "short_length",
      "bucket_lengths", "data_shards", "seed", "eval_every_epochs", "eval_ks", "patience", "select_metric",
      "holdout", "split", "valid_from", "test_from", "init_from", "user_col", "item_col", "time_col", "nulls",
      "item_features", "eval_users"}
  assert "init_checkpoints" in config.make(init_from="runs/day1").kept()  # only beside --init_from
  assert {"feature_item_col", "feature_separator", "id_dropout"} <= set(
      config.make(item_features="items.txt").kept())  # only beside --item_features
  kept = config.make(eval_ks=(10, 20), num_processes=2, coordinator_address="h:1").kept()
  assert kept["eval_ks"] == ["10", "20"] and kept["data_shards"] == 2  # as the flags gave them; resolved


def test_help_lists_sections_in_the_order_a_user_needs_them():
  text = config_flags.help_text(config_flags.MAIN_SECTIONS, "jaxrec.main")
  order = [text.index(f"  --{name}") for name in ("data_path", "workdir", "hidden_size", "loss", "learning_rate",
                                                   "num_epochs", "eval_ks", "layout", "ynn_dots")]
  assert order == sorted(order)
  fv = flags.FlagValues()
  config_flags.define_flags(config_flags.MAIN_SECTIONS, fv)
  assert {f"  --{name}" for name in fv} - {"  --" + n for n in ("help", "helpfull", "helpshort", "helpxml")} <= {
      line.split("=")[0].split(" (")[0] for line in text.splitlines()}


def test_the_python_api_raises_input_errors_not_system_exit(tmp_path):
  with pytest.raises(InputError, match="--data_path: required"):
    api.train(config.make(workdir=str(tmp_path / "wd")))
  with pytest.raises(InputError, match="cannot read"):
    api.train(config.make(workdir=str(tmp_path / "wd"), data_path=str(tmp_path / "missing.csv")))
  assert not os.path.exists(tmp_path / "wd")
