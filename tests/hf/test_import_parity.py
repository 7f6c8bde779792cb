"""Imported Hugging Face models compute HF's own numbers: logits within 1e-4 (fp32) on a
prompt longer than 64 tokens and identical 32-token greedy generations, on one device and
on an 8-device fsdp_tp mesh. Needs torch and transformers (the hf-test extra)."""
import dataclasses
import json

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from tests.conftest import run_cli  # noqa: E402
from tests.hf import hf_models  # noqa: E402
from treadle.configs import shakespeare_char_cpu  # noqa: E402
from treadle.hf import importer  # noqa: E402
from treadle.infer import sampler as sampler_lib  # noqa: E402
from treadle.model import decode  # noqa: E402
from treadle.train import state as state_lib  # noqa: E402

MESH = (2, 2, 2)  # data x fsdp x tensor over the 8 simulated devices
NEW_TOKENS = 32


def _mesh_config():
  c = shakespeare_char_cpu.get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.rules = *MESH, "fsdp_tp"
  return c


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama3", "qwen2"])
def imported(request, tmp_path_factory, text_file):
  """(kind, HF model, HF tokenizer, run dir): imported straight onto the fsdp_tp mesh."""
  root = tmp_path_factory.mktemp(request.param)
  model, tokenizer = hf_models.save(request.param, root / "hf", text_file.read_text())
  importer.import_model(root / "hf", root / "run", _mesh_config())
  return request.param, model, tokenizer, root / "run"


def _prompt(tokenizer, text_file) -> tuple[str, np.ndarray]:
  text = text_file.read_text()[1000:1600]
  ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"][:80])
  assert len(ids) > 64
  return tokenizer.decode(ids), ids


def _logits(sampler, ids) -> np.ndarray:
  model = decode.merge(sampler.graphdef, sampler.params)
  return np.asarray(jax.jit(lambda t: model(t)[0])(ids[None]))[0, :, :hf_models.VOCAB]


def _samplers(run):
  one = sampler_lib.Sampler.from_workdir(run, devices=jax.devices()[:1])
  mesh = sampler_lib.Sampler.from_workdir(run, mesh_shape=MESH, rules="fsdp_tp")
  embed = mesh.params["token_embed"]  # really split: vocab over tensor, embed over fsdp
  assert embed.addressable_shards[0].data.shape == (embed.shape[0] // 2, embed.shape[1] // 2)
  return {"1 device": one, "fsdp_tp 2x2x2": mesh}


def test_logits_and_greedy_tokens_match_hf(imported, text_file):
  kind, model, tokenizer, run = imported
  prompt, ids = _prompt(tokenizer, text_file)
  reference = hf_models.hf_logits(model, ids)
  assert reference.std() > 0.5  # far from uniform: a mapping error would show
  hf_tokens = hf_models.hf_greedy(model, ids, NEW_TOKENS)
  for where, sampler in _samplers(run).items():
    np.testing.assert_array_equal(sampler.tokenizer.encode(prompt), ids)
    np.testing.assert_allclose(_logits(sampler, ids), reference, atol=1e-4, rtol=0,
                               err_msg=f"{kind} on {where}")
    ours = sampler.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0.0,
                            ignore_eos=True)[0].token_ids  # hf_greedy ignores eos too
    assert ours == hf_tokens, f"{kind} on {where}"


def test_rope_scaling_is_imported_only_where_the_config_has_it(imported, text_file):
  """Llama 3's scaling is mapped, and without it the same weights give other logits (the
  parity test above can fail); the other configs get none."""
  kind, model, tokenizer, run = imported
  sampler = sampler_lib.Sampler.from_workdir(run, devices=jax.devices()[:1])
  if kind != "llama3":
    assert sampler.cfg.model.rope_scaling == "none"
    return
  assert sampler.cfg.model.rope_scaling == "llama3"
  plain = dataclasses.replace(sampler.cfg.model, rope_scaling="none")
  graphdef = state_lib.model_graph(plain)[0]
  _, ids = _prompt(tokenizer, text_file)
  forward = jax.jit(lambda p, t: decode.merge(graphdef, p)(t)[0])
  logits = np.asarray(forward(sampler.params, ids[None]))[0, :, :hf_models.VOCAB]
  assert np.abs(logits - hf_models.hf_logits(model, ids)).max() > 1e-2


def test_cli_import_keeps_tokenizer_and_chat_template(tmp_path, text_file):
  model, tokenizer = hf_models.save("qwen2", tmp_path / "hf", text_file.read_text())
  proc = run_cli("treadle.hf.import_cli", "--hf_dir", tmp_path / "hf", "--workdir",
                 tmp_path / "run")
  assert "imported Qwen2ForCausalLM" in proc.stderr
  saved = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
  assert saved["kind"] == "hf" and saved["chat_template"] == hf_models.CHAT_TEMPLATE
  assert saved["token_ids"]["eos_token_id"] == 1
  assert saved["tokenizer_config"]["eos_token"] == "<|eos|>"
  config = json.loads((tmp_path / "run" / "config.json").read_text())
  assert config["model"]["qkv_bias"] and not config["model"]["use_bias"]
  sample = run_cli("treadle.infer.cli", "--workdir", tmp_path / "run", "--prompt", "ROMEO:",
                   "--max_new_tokens", "8", "--temperature", "0")
  assert sample.stdout.startswith("ROMEO:")


def test_export_of_the_import_is_the_same_hf_model(imported, text_file, tmp_path):
  """Exported again, transformers loads the same architecture, logits and tokenizer."""
  from treadle.hf import exporter
  kind, model, tokenizer, run = imported
  exporter.export(run, tmp_path / "out")
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                           dtype=torch.float32).eval()
  assert type(back).__name__ == type(model).__name__
  if kind == "llama3":
    assert back.config.rope_parameters["rope_type"] == "llama3"
  _, ids = _prompt(tokenizer, text_file)
  np.testing.assert_allclose(hf_models.hf_logits(back, ids), hf_models.hf_logits(model, ids),
                             atol=1e-4, rtol=0)
  back_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  text = text_file.read_text()[:300]
  assert back_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
  assert back_tokenizer.chat_template == tokenizer.chat_template
