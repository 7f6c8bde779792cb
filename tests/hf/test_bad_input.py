"""Bad input to treadle-import-hf / treadle-export-hf: one line naming the problem, exit 2,
nothing written. HF directories are written with safetensors and tokenizers only."""
import json
import os

import pytest

from tests.conftest import run_cli
from tests.hf import synthetic
from treadle.hf import exporter
from treadle.hf import importer
from treadle.hf.safetensors_io import HfFormatError


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, text_file):
  return synthetic.write(tmp_path_factory.mktemp("hf") / "gpt2", synthetic.GPT2_CONFIG,
                         text_file.read_text())


def _copy(src, dst):
  dst.mkdir()
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())
  return dst


def _no_config(d):
  (d / "config.json").unlink()


def _bert(d):
  (d / "config.json").write_text(json.dumps({**synthetic.GPT2_CONFIG,
                                             "architectures": ["BertForMaskedLM"]}))


def _wrong_shape(d):  # the file says 4 heads of a 32-wide model; config.json says 48 wide
  (d / "config.json").write_text(json.dumps({**synthetic.GPT2_CONFIG, "n_embd": 48}))


def _truncated(d):
  path = d / "model.safetensors"
  os.truncate(path, path.stat().st_size - 100)


def _bad_generation_config(d):  # its stop ids are read: an id past the vocabulary is damage
  (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5000]}))


@pytest.mark.parametrize("damage,message", [
    (_no_config, "no config.json"),
    (_bad_generation_config, "generation_config.json: eos_token_id=[1, 5000] is out of range "
                             "[0, vocab_size=301)"),
    (_bert, "architectures=['BertForMaskedLM'] is not supported"),
    (_wrong_shape, "tensor 'transformer.wte.weight' has shape [301, 32], config.json implies "
                   "[301, 48]"),
    (_truncated, "is not a readable safetensors file"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(gpt2_dir, tmp_path, damage,
                                                             message):
  hf_dir = _copy(gpt2_dir, tmp_path / "hf")
  damage(hf_dir)
  before = sorted(p.name for p in tmp_path.iterdir())
  proc = run_cli("treadle.hf.import_cli", "--hf_dir", hf_dir, "--workdir", tmp_path / "run",
                 check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run dir, no temporary


@pytest.mark.parametrize("change,message", [
    ({"activation_function": "gelu"}, "activation_function='gelu' has no treadle equivalent"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
])
def test_gpt2_options_without_equivalent_are_named(gpt2_dir, tmp_path, change, message):
  hf_dir = _copy(gpt2_dir, tmp_path / "hf")
  (hf_dir / "config.json").write_text(json.dumps({**synthetic.GPT2_CONFIG, **change}))
  with pytest.raises(HfFormatError, match=message):
    importer.import_model(hf_dir, tmp_path / "run")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
    ({"architectures": ["MistralForCausalLM"], "sliding_window": 64}, "sliding_window=64"),
])
def test_llama_options_without_equivalent_are_named(change, message):
  from treadle.hf import architectures
  with pytest.raises(HfFormatError, match=message):
    architectures.model_options({**synthetic.LLAMA_CONFIG, **change})


def test_missing_and_unexpected_tensors_are_named(gpt2_dir, tmp_path):
  from safetensors import numpy as st_numpy
  hf_dir = _copy(gpt2_dir, tmp_path / "hf")
  tensors = st_numpy.load_file(str(hf_dir / "model.safetensors"))
  extra = {**tensors, "transformer.h.0.attn.rotary.weight": tensors["transformer.ln_f.weight"]}
  st_numpy.save_file(extra, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(HfFormatError, match="'transformer.h.0.attn.rotary.weight' has no place"):
    importer.import_model(hf_dir, tmp_path / "run")
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  st_numpy.save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(HfFormatError, match="'transformer.h.1.mlp.c_fc.bias' is missing"):
    importer.import_model(hf_dir, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_existing_workdir_and_missing_tokenizer(gpt2_dir, tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "keep.txt").write_text("mine")
  with pytest.raises(HfFormatError, match="exists and is not empty"):
    importer.import_model(gpt2_dir, tmp_path / "run")
  assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]
  hf_dir = _copy(gpt2_dir, tmp_path / "hf")
  (hf_dir / "tokenizer.json").unlink()
  with pytest.raises(HfFormatError, match="no tokenizer.json"):
    importer.import_model(hf_dir, tmp_path / "run2")


@pytest.mark.parametrize("override,message", [
    ({"logit_softcap": 30.0}, "model.logit_softcap=30.0 has no GPT2LMHeadModel equivalent"),
    ({"qk_norm": True}, "model.qk_norm=True has no GPT2LMHeadModel equivalent"),
    ({"position": "rope", "norm": "layernorm"}, "model.norm='layernorm' has no LlamaForCausalLM"),
])
def test_export_of_options_without_hf_equivalent(gpt2_dir, tmp_path, override, message):
  importer.import_model(gpt2_dir, tmp_path / "run")
  config_path = tmp_path / "run" / "config.json"
  config = json.loads(config_path.read_text())
  config["model"].update(override)
  config_path.write_text(json.dumps(config))
  with pytest.raises(HfFormatError, match=message):
    exporter.export(tmp_path / "run", tmp_path / "out")
  assert not (tmp_path / "out").exists()
  assert not [p for p in tmp_path.iterdir() if "exporting" in p.name]
