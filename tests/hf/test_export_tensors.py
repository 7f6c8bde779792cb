"""treadle-export-hf writes every parameter once and every tensor its config.json implies.

The run of the issue: RoPE, SwiGLU, RMSNorm and use_bias=True (q/k/v/o and MLP biases) with
qkv_bias left False. Such a run is made by importing a synthetic Llama with all biases
(random, nonzero: a bias transformers silently zero-initialises changes the logits) and
turning its qkv_bias off, which leaves the same parameters (use_bias covers q/k/v)."""
import json

import jax
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from tests.conftest import run_cli
from tests.hf import synthetic
from treadle.hf import exporter
from treadle.hf import importer
from treadle.hf import weights
from treadle.hf.safetensors_io import HfFormatError
from treadle.infer import sampler as sampler_lib
from treadle.model import decode

LLAMA_BIASES = {**synthetic.LLAMA_CONFIG, "attention_bias": True, "mlp_bias": True}


@pytest.fixture(scope="module")
def bias_run(tmp_path_factory, text_file):
  root = tmp_path_factory.mktemp("bias_run")
  hf_dir = synthetic.write(root / "hf", LLAMA_BIASES, text_file.read_text())
  importer.import_model(hf_dir, root / "run")
  config_path = root / "run" / "config.json"
  config = json.loads(config_path.read_text())
  config["model"]["qkv_bias"] = False
  config_path.write_text(json.dumps(config))
  model = config["model"]
  assert (model["position"], model["mlp"], model["norm"], model["use_bias"]) == (
      "rope", "swiglu", "rmsnorm", True)
  return root / "run"


def _sampler(run):
  return sampler_lib.Sampler.from_workdir(run, devices=jax.devices()[:1])


def _bias_names(layers: int) -> set[str]:
  projs = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
  return {f"model.layers.{i}.{p}.bias" for i in range(layers) for p in projs}


def test_all_bias_run_exports_every_bias_and_imports_back_equal(bias_run, tmp_path):
  exporter.export(bias_run, tmp_path / "hf")
  written = st_numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert _bias_names(2) <= set(written), sorted(_bias_names(2) - set(written))
  importer.import_model(tmp_path / "hf", tmp_path / "back")
  a = jax.tree.map(np.asarray, jax.device_get(_sampler(bias_run).params))
  b = jax.tree.map(np.asarray, jax.device_get(_sampler(tmp_path / "back").params))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  q_bias = a["blocks"][0]["attn"]["q"]["bias"]
  assert np.abs(q_bias).max() > 0.1  # nonzero: a dropped bias cannot pass as zeros
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_transformers_loads_all_bias_run_with_no_missing_keys(bias_run, tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  out = tmp_path / "hf"
  run_cli("treadle.hf.export_cli", "--workdir", bias_run, "--hf_dir", out)
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      out, dtype=torch.float32, output_loading_info=True)
  assert type(model).__name__ == "LlamaForCausalLM"
  assert not any(info.values()), info  # missing, unexpected, mismatched keys, errors
  sampler = _sampler(bias_run)
  ids = np.arange(2, 40, dtype=np.int32)
  with torch.no_grad():
    theirs = model.eval()(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()
  ours = np.asarray(decode.merge(sampler.graphdef, sampler.params)(ids[None])[0][0])
  V = synthetic.VOCAB
  assert theirs.shape == (len(ids), V) and theirs.std() > 0.1
  np.testing.assert_allclose(ours[:, :V], theirs, atol=1e-4, rtol=0)


_LINKS = weights.links


def _drop_link(path_end):
  return lambda *a, **k: [l for l in _LINKS(*a, **k) if l.path is None or l.path[-2:] != path_end]


def _twice(*a, **k):
  out = _LINKS(*a, **k)
  return out + out[-1:]


@pytest.mark.parametrize("links,message", [
    (_drop_link(("q", "bias")), "parameter blocks/0/attn/q/bias is not written"),
    (_twice, "written twice"),
])
def test_exporter_refuses_an_incomplete_mapping_and_writes_nothing(bias_run, tmp_path,
                                                                   monkeypatch, links, message):
  """The exporter's own check, not only this test, catches a mapping that loses or repeats a
  parameter (as the q/k/v biases were lost)."""
  monkeypatch.setattr(weights, "links", links)
  with pytest.raises(HfFormatError, match=message):
    exporter.export(bias_run, tmp_path / "hf")
  assert list(tmp_path.iterdir()) == []


def test_exporter_checks_the_written_files_against_their_config(bias_run, tmp_path,
                                                                 monkeypatch):
  """The second check, on its own: a tensor the written config.json implies but the files
  lack is named before the directory appears. The mapping is the old one of the issue: q/k/v
  biases only with qkv_bias (the config read back has it, the exported run does not)."""
  old = lambda cfg, *a: _drop_link(("q", "bias"))(cfg, *a) if not cfg.qkv_bias else _LINKS(cfg, *a)
  monkeypatch.setattr(weights, "links", old)
  monkeypatch.setattr(exporter, "check_mapping", lambda *a: None)
  with pytest.raises(HfFormatError, match="does not load back: tensor "
                     "'model.layers.0.self_attn.q_proj.bias' is missing"):
    exporter.export(bias_run, tmp_path / "hf")
  assert list(tmp_path.iterdir()) == []
