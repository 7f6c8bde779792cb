"""A hostile or broken HF directory: file names and symlinks that leave it, config values of
the wrong type or size, tokenizer files of the wrong shape. Each is one line naming the file
and key (exit 2 from treadle-import-hf), nothing read from outside, nothing written; an HF
hub cache snapshot (files linked into blobs/) still imports."""
import json
import os
import shutil

import pytest
from safetensors import numpy as st_numpy

from tests.conftest import run_cli
from tests.hf import synthetic
from treadle.hf import architectures
from treadle.hf import importer
from treadle.hf.safetensors_io import HfFormatError

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, text_file):
  return synthetic.write(tmp_path_factory.mktemp("hf") / "gpt2", synthetic.GPT2_CONFIG,
                         text_file.read_text())


@pytest.fixture
def hf_dir(gpt2_dir, tmp_path):
  """A fresh copy of the GPT-2 directory to damage."""
  return shutil.copytree(gpt2_dir, tmp_path / "hf")


def _move_weights_out(hf_dir, name: str):
  """The real weights moved outside the directory; the index names them as `name` (with
  {out} replaced by the outside file's absolute path). Importing them would succeed."""
  outside = hf_dir.parent / "outside.safetensors"
  (hf_dir / "model.safetensors").rename(outside)
  names = st_numpy.load_file(str(outside)).keys()
  weight_map = {n: name.format(out=outside) for n in names}
  (hf_dir / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _cli_error(hf_dir, tmp_path) -> str:
  """treadle-import-hf on `hf_dir`: exit 2, one `error:` line (returned), no traceback, and
  nothing new in tmp_path (no run directory, no temporary)."""
  before = sorted(p.name for p in tmp_path.iterdir())
  proc = run_cli("treadle.hf.import_cli", "--hf_dir", hf_dir, "--workdir", tmp_path / "run",
                 check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == before
  return errors[0]


def _api_error(hf_dir, tmp_path) -> str:
  with pytest.raises(HfFormatError) as info:
    importer.import_model(hf_dir, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  message = str(info.value)
  assert "\n" not in message
  return message


# -- file names and symlinks that leave the directory --------------------------------------

def test_index_naming_a_parent_file_is_refused_by_the_cli(hf_dir, tmp_path):
  _move_weights_out(hf_dir, "../outside.safetensors")
  error = _cli_error(hf_dir, tmp_path)
  assert "'../outside.safetensors', which is outside" in error and INDEX in error


def test_index_naming_an_absolute_path_is_refused(hf_dir, tmp_path):
  _move_weights_out(hf_dir, "{out}")
  message = _api_error(hf_dir, tmp_path)
  assert f"names '{tmp_path / 'outside.safetensors'}', which is outside" in message


@pytest.mark.parametrize("weight_map", [["model.safetensors"], {"a": 5}, "model.safetensors"])
def test_weight_map_of_the_wrong_shape_is_refused(hf_dir, tmp_path, weight_map):
  (hf_dir / INDEX).write_text(json.dumps({"weight_map": weight_map}))
  message = _api_error(hf_dir, tmp_path)
  assert message.startswith(f"{INDEX}: weight_map must be a JSON object of tensor name -> "
                            "file name")


def _link_out(hf_dir, name: str):
  """hf_dir/name becomes a symlink to the same (valid) file placed outside the directory."""
  outside = hf_dir.parent / "elsewhere"
  outside.mkdir(exist_ok=True)
  (hf_dir / name).rename(outside / name)
  (hf_dir / name).symlink_to(os.path.relpath(outside / name, hf_dir))


def test_symlink_out_of_the_dir_is_refused_by_the_cli(hf_dir, tmp_path):
  _link_out(hf_dir, "model.safetensors")
  error = _cli_error(hf_dir, tmp_path)
  assert f"'{hf_dir / 'model.safetensors'}' links to '{tmp_path.resolve() / 'elsewhere'}" in error


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_any_file_linked_out_of_the_dir_is_refused(hf_dir, tmp_path, name):
  _link_out(hf_dir, name)
  assert f"'{hf_dir / name}' links to" in _api_error(hf_dir, tmp_path)


def test_index_naming_a_file_under_a_linked_out_subdirectory_is_refused(hf_dir, tmp_path):
  (tmp_path / "elsewhere").mkdir()
  (hf_dir / "sub").symlink_to(tmp_path / "elsewhere")
  _move_weights_out(hf_dir, "sub/outside.safetensors")
  (tmp_path / "outside.safetensors").rename(tmp_path / "elsewhere" / "outside.safetensors")
  assert "links to" in _api_error(hf_dir, tmp_path)


def _shard(hf_dir):
  """model.safetensors split into two files with an index, as large models are saved."""
  tensors = st_numpy.load_file(str(hf_dir / "model.safetensors"))
  names = sorted(tensors)
  files = {"model-00001-of-00002.safetensors": names[::2],
           "model-00002-of-00002.safetensors": names[1::2]}
  for file, part in files.items():
    st_numpy.save_file({n: tensors[n] for n in part}, str(hf_dir / file),
                       metadata={"format": "pt"})
  weight_map = {n: file for file, part in files.items() for n in part}
  (hf_dir / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  (hf_dir / "model.safetensors").unlink()


def _as_hub_cache(src, cache):
  """src laid out as huggingface_hub caches a download: every file a blob under
  <repo>/blobs/, linked from <repo>/snapshots/<revision>/ by a relative symlink."""
  repo = cache / "models--someone--tiny-gpt2"
  snapshot = repo / "snapshots" / ("ab" * 20)
  (repo / "blobs").mkdir(parents=True)
  snapshot.mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("ab" * 20)
  for i, f in enumerate(sorted(src.iterdir())):
    blob = repo / "blobs" / f"{i:064x}"
    shutil.copyfile(f, blob)
    (snapshot / f.name).symlink_to(f"../../blobs/{blob.name}")
  return repo, snapshot


def test_hub_cache_snapshot_with_blob_links_imports(hf_dir, tmp_path):
  _shard(hf_dir)
  _, snapshot = _as_hub_cache(hf_dir, tmp_path / "cache")
  assert all((snapshot / n).is_symlink() for n in ("config.json", INDEX, "tokenizer.json"))
  cfg = importer.import_model(snapshot, tmp_path / "run")
  assert cfg.model.num_layers == 2 and (tmp_path / "run" / "config.json").exists()


def test_hub_cache_link_outside_blobs_is_refused(hf_dir, tmp_path):
  repo, snapshot = _as_hub_cache(hf_dir, tmp_path / "cache")
  (repo / "elsewhere").mkdir()
  shutil.copyfile(snapshot / "model.safetensors", repo / "elsewhere" / "model.safetensors")
  (snapshot / "model.safetensors").unlink()
  (snapshot / "model.safetensors").symlink_to("../../elsewhere/model.safetensors")
  assert "links to" in _api_error(snapshot, tmp_path)


# -- config.json and tokenizer_config.json values ------------------------------------------

def _with_config(hf_dir, body):
  (hf_dir / "config.json").write_text(json.dumps(body))


def test_config_json_that_is_a_list_is_refused_by_the_cli(hf_dir, tmp_path):
  _with_config(hf_dir, [synthetic.GPT2_CONFIG])
  error = _cli_error(hf_dir, tmp_path)
  assert "config.json' must hold a JSON object, got [" in error


def test_string_where_an_integer_belongs_is_refused_by_the_cli(hf_dir, tmp_path):
  _with_config(hf_dir, {**synthetic.GPT2_CONFIG, "n_layer": "2"})
  assert _cli_error(hf_dir, tmp_path) == ("error: config.json: n_layer must be an integer, "
                                          "got '2'")


def test_unreadable_config_json_is_one_line(hf_dir, tmp_path):
  (hf_dir / "config.json").unlink()
  (hf_dir / "config.json").mkdir()  # reading it fails with an OSError, even as root
  assert "config.json' cannot be read" in _api_error(hf_dir, tmp_path)


def _options_error(config) -> str:
  with pytest.raises(HfFormatError) as info:
    architectures.model_options(config)
  return str(info.value)


LLAMA = synthetic.LLAMA_CONFIG
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": ["llama3", 8.0]}, "rope_scaling must be a JSON object, got ['llama3', 8.0]"),
    ({"rope_scaling": "llama3"}, "rope_scaling must be a JSON object, got 'llama3'"),
    ({"rope_scaling": {**LLAMA3, "factor": None}}, "rope_scaling.factor is missing"),
    ({"rope_scaling": {**LLAMA3, "factor": "8"}}, "rope_scaling.factor must be a finite number"),
    ({"rope_scaling": {"rope_type": 3}}, "rope_scaling.rope_type must be a string, got 3"),
    ({"rope_parameters": 10000.0}, "rope_parameters must be a JSON object"),
    ({"rope_theta": "1e4"}, "rope_theta must be a finite number, got '1e4'"),
    ({"hidden_act": 5}, "hidden_act must be a string, got 5"),
    ({"model_type": []}, "model_type must be a string, got []"),
    ({"architectures": "LlamaForCausalLM"}, "architectures must be a list of strings"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be an integer, got True"),
    ({"num_hidden_layers": "4"}, "num_hidden_layers must be an integer, got '4'"),
    ({"num_hidden_layers": 2.0}, "num_hidden_layers must be an integer, got 2.0"),
    ({"num_hidden_layers": 10**9}, "num_hidden_layers=1000000000 is out of range [1, 1024]"),
    ({"num_hidden_layers": 0}, "num_hidden_layers=0 is out of range"),
    ({"hidden_size": 2**30}, "hidden_size=1073741824 is out of range [1, 1048576]"),
    ({"intermediate_size": -1}, "intermediate_size=-1 is out of range"),
    ({"num_key_value_heads": "2"}, "num_key_value_heads must be an integer"),
    ({"head_dim": 1.5}, "head_dim must be an integer, got 1.5"),
    ({"vocab_size": 2**30}, "vocab_size=1073741824 is out of range [1, 16777216]"),
    ({"max_position_embeddings": 10**12}, "max_position_embeddings=1000000000000 is out"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps must be a finite number, got '1e-5'"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number, got nan"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
    ({"attention_bias": 0}, "attention_bias must be true or false, got 0"),
    ({"pretraining_tp": 1.0}, "pretraining_tp must be an integer, got 1.0"),
    ({"pretraining_tp": True}, "pretraining_tp must be an integer, got True"),
    ({"layer_types": "full_attention"}, "layer_types must be a list of strings"),
    ({"architectures": ["MistralForCausalLM"], "sliding_window": "64"},
     "sliding_window must be an integer, got '64'"),
])
def test_llama_config_values_of_the_wrong_type_or_size_name_the_key(change, message):
  assert _options_error({**LLAMA, **change}).startswith(f"config.json: {message}")


@pytest.mark.parametrize("change,message", [
    ({"scale_attn_weights": 1}, "scale_attn_weights must be true or false, got 1"),
    ({"add_cross_attention": 0}, "add_cross_attention must be true or false, got 0"),
    ({"activation_function": ["gelu_new"]}, "activation_function must be a string"),
    ({"n_inner": "128"}, "n_inner must be an integer, got '128'"),
    ({"layer_norm_epsilon": True}, "layer_norm_epsilon must be a finite number, got True"),
])
def test_gpt2_config_values_compare_types_as_well_as_values(change, message):
  assert _options_error({**synthetic.GPT2_CONFIG, **change}).startswith(f"config.json: {message}")


def test_llama3_rope_scaling_of_the_right_shape_still_maps():
  _, options = architectures.model_options({**LLAMA, "rope_scaling": LLAMA3})
  assert options["rope_scaling"] == "llama3" and options["rope_scaling_factor"] == 8.0
  _, options = architectures.model_options(  # transformers 5's form
      {**LLAMA, "rope_theta": None, "rope_parameters": {**LLAMA3, "rope_theta": 5e5}})
  assert options["rope_base"] == 5e5 and options["rope_original_max_len"] == 64


@pytest.mark.parametrize("change,message", [
    ({"eos_token_id": synthetic.VOCAB}, "eos_token_id=301 is out of range [0, vocab_size=301)"),
    ({"eos_token_id": [1, 999]}, "eos_token_id=[1, 999] is out of range"),
    ({"eos_token_id": "1"}, "eos_token_id must be a token id (an integer) or a list of them"),
    ({"bos_token_id": -1}, "bos_token_id=-1 is out of range"),
    ({"bos_token_id": [0]}, "bos_token_id must be a token id (an integer), got [0]"),
    ({"pad_token_id": True}, "pad_token_id must be a token id (an integer), got True"),
])
def test_token_ids_out_of_range_or_of_the_wrong_type_are_refused(hf_dir, tmp_path, change,
                                                                  message):
  _with_config(hf_dir, {**synthetic.GPT2_CONFIG, **change})
  assert _api_error(hf_dir, tmp_path).startswith(f"config.json: {message}")


def test_token_ids_in_range_and_null_are_kept(hf_dir, tmp_path):
  _with_config(hf_dir, {**synthetic.GPT2_CONFIG, "eos_token_id": [1, 0], "pad_token_id": None})
  plan = importer.plan(hf_dir)
  assert plan.tokenizer.token_ids == {"bos_token_id": 0, "eos_token_id": [1, 0],
                                      "pad_token_id": None}


def _with_tokenizer_config(hf_dir, body):
  (hf_dir / "tokenizer_config.json").write_text(json.dumps(body))


def test_tokenizer_config_that_is_a_list_is_refused_by_the_cli(hf_dir, tmp_path):
  _with_tokenizer_config(hf_dir, [{"chat_template": synthetic.CHAT_TEMPLATE}])
  assert "tokenizer_config.json' must hold a JSON object" in _cli_error(hf_dir, tmp_path)


@pytest.mark.parametrize("body,message", [
    ({"chat_template": 5}, "chat_template must be a string, got 5"),
    ({"chat_template": [{"name": "tool_use", "template": "x"}]},
     "chat_template has no template named 'default' (named: ['tool_use'])"),
    ({"chat_template": [{"name": "default"}]}, "chat_template[0].template is missing"),
    ({"chat_template": ["x"]}, "chat_template[0] must be a JSON object, got 'x'"),
    ({"bos_token": 5}, "bos_token must be a string or an object with a 'content' string"),
    ({"eos_token": {"id": 1}}, "eos_token.content is missing"),
])
def test_tokenizer_config_values_of_the_wrong_shape_are_named(hf_dir, tmp_path, body, message):
  _with_tokenizer_config(hf_dir, body)
  assert _api_error(hf_dir, tmp_path).startswith(f"tokenizer_config.json: {message}")


def test_named_chat_templates_pick_default_and_added_tokens_are_accepted(hf_dir):
  _with_tokenizer_config(hf_dir, {
      "chat_template": [{"name": "tool_use", "template": "tools"},
                        {"name": "default", "template": synthetic.CHAT_TEMPLATE}],
      "bos_token": {"content": "<|bos|>", "lstrip": False}, "eos_token": "<|eos|>"})
  assert importer.plan(hf_dir).tokenizer.chat_template == synthetic.CHAT_TEMPLATE


def _with_generation_config(hf_dir, body):
  (hf_dir / "generation_config.json").write_text(json.dumps(body))


@pytest.mark.parametrize("body,message", [
    ([{"eos_token_id": 1}], "generation_config.json' must hold a JSON object"),
    ({"eos_token_id": "1"}, "generation_config.json: eos_token_id must be a token id (an "
                            "integer) or a list of them"),
    ({"eos_token_id": [1, 301]}, "generation_config.json: eos_token_id=[1, 301] is out of "
                                 "range [0, vocab_size=301)"),
])
def test_generation_config_values_of_the_wrong_shape_are_named(hf_dir, tmp_path, body, message):
  _with_generation_config(hf_dir, body)
  assert message in _api_error(hf_dir, tmp_path)


def test_generation_config_linked_out_of_the_dir_is_refused(hf_dir, tmp_path):
  _with_generation_config(hf_dir, {"eos_token_id": 1})
  _link_out(hf_dir, "generation_config.json")
  assert f"'{hf_dir / 'generation_config.json'}' links to" in _api_error(hf_dir, tmp_path)


def test_generation_config_eos_ids_are_kept_for_the_stop_ids(hf_dir):
  assert "generation_eos_token_id" not in importer.plan(hf_dir).tokenizer.token_ids  # no file
  _with_generation_config(hf_dir, {"eos_token_id": [1, 0], "max_new_tokens": 5})
  assert importer.plan(hf_dir).tokenizer.token_ids["generation_eos_token_id"] == [1, 0]
