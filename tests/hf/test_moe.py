"""Mixtral and Qwen2-MoE: imported, treadle computes transformers' logits (fp32, within 1e-4)
and its 32-token greedy generations, from the hub's per-expert tensors and from transformers'
fused expert tensors; exported, transformers loads every tensor and computes treadle's logits;
what treadle cannot express is a one-line error naming the HF field. Needs torch and
transformers (the hf-test extra).

Kept short for CI: greedy generation (the slow compile) on two of the three models, which
between them have both routings, both layouts, shared experts and interleaved dense blocks;
the other layout of Mixtral's weights is checked to import equal parameters."""
import dataclasses
import json

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from safetensors import safe_open  # noqa: E402

from tests.hf import hf_models  # noqa: E402
from tests.hf import synthetic  # noqa: E402
from treadle.configs import moe_char_cpu  # noqa: E402
from treadle.hf import architectures  # noqa: E402
from treadle.hf import exporter  # noqa: E402
from treadle.hf import importer  # noqa: E402
from treadle.hf.config_fields import HfFormatError  # noqa: E402
from treadle.infer import sampler as sampler_lib  # noqa: E402
from treadle.model import decode  # noqa: E402

NEW_TOKENS = 32
COMMON = dict(vocab_size=synthetic.VOCAB, bos_token_id=0, eos_token_id=1, hidden_size=32,
              intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
QWEN2_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                 shared_expert_intermediate_size=48, norm_topk_prob=False, **COMMON)
# kind -> (HF config, expert layout saved): the hub's per-expert tensors, or fused
KINDS = {
    "mixtral": (lambda: transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2,
                                                   **COMMON), "hub"),
    "qwen2_moe": (lambda: transformers.Qwen2MoeConfig(decoder_sparse_step=1, **QWEN2_MOE),
                  "hub"),
    # block 0 dense (intermediate_size), block 1 MoE; tied embeddings
    "qwen2_moe_step2": (lambda: transformers.Qwen2MoeConfig(
        decoder_sparse_step=2, tie_word_embeddings=True, **QWEN2_MOE), "fused"),
}


@pytest.fixture(scope="module")
def tokenizer(text_file):
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=synthetic.train_tokenizer(text_file.read_text()), bos_token="<|bos|>",
      eos_token="<|eos|>")


def _model(kind: str):
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(KINDS[kind][0](), dtype=torch.float32)
  hf_models.randomize(model, torch)  # routers too: far from uniform routing
  return model.eval()


def _save(model, tokenizer, out, layout: str):
  model.save_pretrained(out, save_original_format=layout == "hub")
  tokenizer.save_pretrained(out)
  with safe_open(str(out / "model.safetensors"), "np") as f:  # the layout really is that one
    fused = any(name.endswith("mlp.experts.gate_up_proj") for name in f.keys())
  assert fused == (layout == "fused")
  return out


@pytest.fixture(scope="module", params=list(KINDS))
def imported(request, tmp_path_factory, tokenizer):
  """(kind, HF model, run dir): imported onto an fsdp_tp mesh of the 8 devices."""
  kind = request.param
  root = tmp_path_factory.mktemp(kind)
  model = _model(kind)
  _save(model, tokenizer, root / "hf", KINDS[kind][1])
  base = moe_char_cpu.get_config()  # its MoE options must not leak into the import
  base.mesh.data, base.mesh.fsdp, base.mesh.tensor, base.mesh.rules = 2, 2, 2, "fsdp_tp"
  importer.import_model(root / "hf", root / "run", base)
  return kind, model, root / "run"


def _prompt(tokenizer, text_file) -> tuple[str, np.ndarray]:
  text = text_file.read_text()[1000:1600]
  ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"][:80])
  assert len(ids) > 64
  return tokenizer.decode(ids), ids


def _sampler(run):
  return sampler_lib.Sampler.from_workdir(run, devices=jax.devices()[:1])


def _logits(sampler, ids) -> np.ndarray:
  model = decode.merge(sampler.graphdef, sampler.params)
  return np.asarray(jax.jit(lambda t: model(t)[0])(ids[None]))[0, :, :synthetic.VOCAB]


def test_imported_options(imported):
  kind, _, run = imported
  m = _sampler(run).cfg.model
  got = (m.num_experts, m.experts_per_token, m.moe_every, m.expert_hidden_dim,
         m.num_shared_experts, m.shared_expert_gate, m.router_norm_topk, m.capacity_factor,
         m.hidden_dim, m.qkv_bias, m.rope_base)
  assert got == {"mixtral": (4, 2, 1, 48, 0, False, True, 0.0, 48, False, 1e6),
                 "qwen2_moe": (4, 2, 1, 24, 2, True, False, 0.0, 48, True, 1e4),
                 "qwen2_moe_step2": (4, 2, 2, 24, 2, True, False, 0.0, 48, True, 1e4)}[kind]
  assert m.router_aux_loss_coef == 0.001 and m.mlp == "swiglu"


def test_logits_match_hf(imported, tokenizer, text_file):
  kind, model, run = imported
  prompt, ids = _prompt(tokenizer, text_file)
  reference = hf_models.hf_logits(model, ids)
  assert reference.std() > 0.5  # far from uniform: a mapping error would show
  sampler = _sampler(run)
  np.testing.assert_array_equal(sampler.tokenizer.encode(prompt), ids)
  np.testing.assert_allclose(_logits(sampler, ids), reference, atol=1e-4, rtol=0, err_msg=kind)


@pytest.mark.parametrize("imported", ["mixtral", "qwen2_moe_step2"], indirect=True)
def test_greedy_tokens_match_hf(imported, tokenizer, text_file):
  kind, model, run = imported
  prompt, ids = _prompt(tokenizer, text_file)
  ours = _sampler(run).generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0.0,
                                ignore_eos=True)[0].token_ids  # hf_greedy ignores eos too
  assert ours == hf_models.hf_greedy(model, ids, NEW_TOKENS), kind


def test_export_loads_in_transformers_with_treadles_logits(imported, tokenizer, text_file,
                                                           tmp_path):
  kind, model, run = imported
  exporter.export(run, tmp_path / "out")
  back, info = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", dtype=torch.float32, output_loading_info=True)
  assert type(back).__name__ == type(model).__name__
  assert not any(info.values()), info  # missing, unexpected, mismatched keys, errors
  _, ids = _prompt(tokenizer, text_file)
  np.testing.assert_allclose(hf_models.hf_logits(back.eval(), ids),
                             _logits(_sampler(run), ids), atol=1e-4, rtol=0)


def _params(run) -> dict:
  return jax.tree.map(np.asarray, jax.device_get(_sampler(run).params))


@pytest.mark.parametrize("imported", ["mixtral"], indirect=True)
def test_fused_layout_imports_the_same_parameters(imported, tokenizer, tmp_path):
  """Mixtral's weights saved fused (transformers renames block_sparse_moe to mlp there)
  import to the parameters of the hub layout."""
  _, model, run = imported
  importer.import_model(_save(model, tokenizer, tmp_path / "hf", "fused"), tmp_path / "run")
  a, b = _params(run), _params(tmp_path / "run")
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _edit_run(src, dst, **model):
  """A copy of run `src` whose model config has `model` changed (same parameters)."""
  dst.mkdir()
  for f in src.iterdir():
    target = dst / f.name
    if f.is_dir():
      target.symlink_to(f, target_is_directory=True)
    else:
      target.write_bytes(f.read_bytes())
  config = json.loads((dst / "config.json").read_text())
  config["model"].update(model)
  (dst / "config.json").write_text(json.dumps(config))
  return dst


@pytest.mark.parametrize("imported", ["mixtral"], indirect=True)
def test_run_without_shared_expert_or_mixtral_routing_exports_as_qwen2_moe(
    imported, tokenizer, text_file, tmp_path):
  """A treadle MoE run Mixtral cannot express (top-k weights not renormalised, treadle's
  default) is a Qwen2-MoE whose shared expert is zeros, computing treadle's logits."""
  _, _, run = imported
  plain = _edit_run(run, tmp_path / "run", router_norm_topk=False)
  assert exporter.export(plain, tmp_path / "out") == "Qwen2MoeForCausalLM"
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                           dtype=torch.float32).eval()
  assert not back.config.norm_topk_prob and back.config.decoder_sparse_step == 1
  _, ids = _prompt(tokenizer, text_file)
  ours = _logits(_sampler(plain), ids)
  np.testing.assert_allclose(hf_models.hf_logits(back, ids), ours, atol=1e-4, rtol=0)
  assert np.abs(ours - _logits(_sampler(run), ids)).max() > 1e-2  # the routing mattered


def _config(kind: str) -> dict:
  """The config.json of `kind` as save_pretrained writes it."""
  arch = "MixtralForCausalLM" if kind == "mixtral" else "Qwen2MoeForCausalLM"
  return {**KINDS[kind][0]().to_dict(), "architectures": [arch]}


@pytest.mark.parametrize("kind,change,message", [
    ("mixtral", {"sliding_window": 64}, "sliding_window=64 has no treadle equivalent"),
    ("mixtral", {"num_local_experts": 1}, "num_local_experts=1 is out of range [2, 65536]"),
    ("mixtral", {"num_experts_per_tok": 5}, "num_experts_per_tok=5 is out of range [1, 4]"),
    ("mixtral", {"router_aux_loss_coef": -0.1}, "router_aux_loss_coef=-0.1 is out of range"),
    ("qwen2_moe", {"use_sliding_window": True}, "use_sliding_window=True has no treadle"),
    ("qwen2_moe", {"mlp_only_layers": [0]}, "mlp_only_layers=[0] has no treadle equivalent "
                                            "(layer 0 is MoE by decoder_sparse_step=1"),
    ("qwen2_moe", {"shared_expert_intermediate_size": 40},
     "shared_expert_intermediate_size=40 has no treadle equivalent (a multiple of "
     "moe_intermediate_size=24"),
    ("qwen2_moe", {"num_experts": 1}, "num_experts=1 has no treadle equivalent"),
    ("qwen2_moe", {"hidden_act": "gelu"}, "hidden_act='gelu' has no treadle equivalent"),
])
def test_hf_options_without_equivalent_are_named(kind, change, message):
  with pytest.raises(HfFormatError) as error:
    architectures.model_options({**_config(kind), **change})
  text = str(error.value)
  assert text.startswith("config.json: ") and message in text and "\n" not in text


def test_what_is_dense_imports_dense():
  """mlp_only_layers naming a layer decoder_sparse_step already makes dense changes nothing;
  a Qwen2-MoE with no MoE layer (num_experts 0, or the step past the last layer) is dense;
  a dense Llama imported onto an MoE base config stays dense."""
  step2 = {**_config("qwen2_moe_step2"), "mlp_only_layers": [0]}
  assert architectures.model_options(step2)[1]["moe_every"] == 2
  for change in ({"num_experts": 0}, {"decoder_sparse_step": 3}):
    _, options = architectures.model_options({**_config("qwen2_moe"), **change})
    assert options["num_experts"] == 0 and options["qkv_bias"]
  _, llama = architectures.model_options(synthetic.LLAMA_CONFIG)
  assert importer.run_config(llama, moe_char_cpu.get_config()).model.num_experts == 0


@pytest.mark.parametrize("imported", ["qwen2_moe"], indirect=True)
def test_import_refuses_before_writing(imported, tmp_path):
  """The directory's own config.json, refused by treadle-import-hf before anything is written."""
  hf_dir = imported[2].parent / "hf"
  bad = tmp_path / "hf"
  bad.mkdir()
  for f in hf_dir.iterdir():
    (bad / f.name).write_bytes(f.read_bytes())
  config = json.loads((hf_dir / "config.json").read_text())
  (bad / "config.json").write_text(json.dumps({**config, "mlp_only_layers": [1]}))
  with pytest.raises(HfFormatError, match=r"config.json: mlp_only_layers=\[1\] has no treadle"):
    importer.import_model(bad, tmp_path / "run")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("imported", ["qwen2_moe"], indirect=True)
@pytest.mark.parametrize("change,message", [
    ({"shared_expert_gate": False}, "model.shared_expert_gate=False has no Qwen2MoeForCausalLM"),
    ({"position": "learned"}, "model.num_experts=4 has no GPT2LMHeadModel equivalent"),
])
def test_export_of_moe_options_without_hf_equivalent(imported, change, message):
  _, _, run = imported
  cfg = dataclasses.replace(_sampler(run).cfg.model, **change)
  with pytest.raises(HfFormatError, match=message):
    architectures.export_architecture(cfg)


def test_mixtral_num_experts_is_num_local_experts():
  """MixtralConfig reads a config.json's num_experts as num_local_experts (attribute_map)."""
  config = {k: v for k, v in _config("mixtral").items() if k != "num_local_experts"}
  assert architectures.model_options({**config, "num_experts": 6})[1]["num_experts"] == 6
  assert transformers.MixtralConfig(num_experts=6).num_local_experts == 6


def test_scanned_run_with_interleaved_moe_blocks_unstacks_into_its_layers():
  """A scanned run with moe_every 2 stacks groups of (dense, MoE) blocks; export unstacks
  them into the unscanned model's layers, in order (a wrong order mixes dense and MoE)."""
  from treadle.train import state as state_lib
  config = {**_config("qwen2_moe_step2"), "num_hidden_layers": 4}
  cfg = importer.run_config(architectures.model_options(config)[1], None).model
  scanned = dataclasses.replace(cfg, scan_layers=True)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                        state_lib.model_graph(scanned)[1])
  out, out_cfg = exporter._unstack_layers(params, scanned)
  want = state_lib.model_graph(cfg)[1]
  assert out_cfg == cfg and jax.tree.structure(out) == jax.tree.structure(want)
  assert [x.shape for x in jax.tree.leaves(out)] == [x.shape for x in jax.tree.leaves(want)]
  np.testing.assert_array_equal(out["blocks"][3]["mlp"]["router"],
                                params["blocks"]["blocks"][1]["mlp"]["router"][1])
