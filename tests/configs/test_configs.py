"""Every config file loads, splits and builds; configs/base.py is the one schema."""
import dataclasses
import importlib
import json
import pathlib

import jax
import pytest

from treadle.configs import base
from treadle.data import images
from treadle.data import text
from treadle.model import classifier
from treadle.model import gpt
from treadle.train import config as config_lib
from treadle.train import optimizer
from treadle.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
# configs/ also holds the declaration vocabulary (keys) and the reference generator
NOT_CONFIG_FILES = {"__init__", "keys", "reference"}
CONFIG_FILES = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                      if p.stem not in NOT_CONFIG_FILES)


def _with_data_fields(cfg: config_lib.RunConfig) -> config_lib.RunConfig:
  """What the task fills in from the data (vocabulary, context, image shape, classes)."""
  if cfg.task in base.POST_TRAINING:  # the init_from model's (64 tokens, context 128)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=64,
                                                              max_seq_len=128))
  if cfg.task == "lm":
    vocab = cfg.data.vocab_size if cfg.data.tokenizer == "bpe" else 65
    model = dataclasses.replace(cfg.model, vocab_size=vocab,
                                max_seq_len=cfg.model.max_seq_len or cfg.data.seq_len)
  else:
    model = dataclasses.replace(cfg.model, num_classes=10, image_height=8, image_width=8)
  return dataclasses.replace(cfg, model=model)


def test_configs_directory_holds_the_known_files():
  assert {"base", "tiny", "shakespeare_char_cpu", "digits_cnn", "digits_vit", "sft", "dpo",
          "grpo"} <= set(CONFIG_FILES)


def _load(name: str, tmp_path: pathlib.Path):
  module = importlib.import_module(f"treadle.configs.{name}")
  if name == "imported":  # takes the directory of a run written by treadle-import-hf
    (tmp_path / "config.json").write_text(json.dumps(base.get_config("lm").to_dict()))
    return module.get_config(str(tmp_path))
  return module.get_config()


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_loads_splits_and_builds(name, tmp_path):
  cfg = config_lib.split(_load(name, tmp_path))
  cfg = _with_data_fields(cfg)
  graphdef, abstract, specs = state_lib.model_graph(cfg.model)  # abstract init: no arrays
  leaves = jax.tree.leaves(abstract)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  count = sum(x.size for x in leaves)
  tx = optimizer.build(cfg.optimizer, cfg.train.num_steps, specs)
  opt_state = jax.eval_shape(tx.init, abstract)
  assert sum(x.size for x in jax.tree.leaves(opt_state)) >= count  # moments for the params
  assert config_lib.split(cfg.to_dict()) == cfg  # what config.json holds reads back the same


@pytest.mark.parametrize("name,expected", [
    ("shakespeare_char_cpu", 0.80e6), ("shakespeare_char", 10.7e6), ("tiny", 0.03e6)])
def test_lm_configs_build_the_documented_sizes(name, expected):
  cfg = _with_data_fields(config_lib.split(
      importlib.import_module(f"treadle.configs.{name}").get_config()))
  _, abstract, _ = state_lib.model_graph(cfg.model)
  count = sum(x.size for x in jax.tree.leaves(abstract))
  assert abs(count - expected) / expected < 0.1, count


def test_a_missing_key_is_an_error():
  cfg = base.get_config("lm").to_dict()
  del cfg["train"]["seed"]
  with pytest.raises(ValueError, match=r"missing key train\.seed"):
    config_lib.split(cfg)


def test_an_unknown_key_is_an_error_in_any_section():
  for task in base.TASKS:
    cfg = base.get_config(task).to_dict()
    cfg["optimizer"]["lr"] = 1e-3
    cfg["model"]["extra"] = 1
    with pytest.raises(ValueError, match=r"unknown keys model\.extra, optimizer\.lr"):
      config_lib.split(cfg)


def test_image_keys_are_unknown_to_a_language_model():
  cfg = base.get_config("lm").to_dict()
  cfg["model"]["kind"] = "cnn"
  with pytest.raises(ValueError, match=r"unknown key model\.kind"):
    config_lib.split(cfg)


def test_typed_configs_have_no_defaults_of_their_own():
  types = [config_lib.OptimizerConfig, config_lib.TrainConfig, config_lib.MeshConfig,
           config_lib.FinetuneConfig, gpt.ModelConfig, classifier.ClassifierConfig,
           text.DataConfig, images.DataConfig]
  for cls in types:
    with_default = [f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING]
    assert not with_default, (cls.__name__, with_default)


def test_every_base_key_has_a_one_line_doc():
  declared = {k: v for task in base.TASKS for k, v in base.declared(task).items()}
  assert len(declared) > 60
  undocumented = [k for k, v in declared.items() if not v.doc.strip() or "\n" in v.doc]
  assert not undocumented, undocumented


def test_saved_run_configs_gain_keys_added_later(tmp_path):
  """A run directory written before a key existed reads with the key's base value."""
  cfg = config_lib.split(base.get_config("lm"))
  saved = cfg.to_dict()
  del saved["train"]["wandb_project"]
  saved["model"]["lora_rank"] = 0  # older runs saved the derived LoRA fields too
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved))
  assert config_lib.from_json(path) == cfg
