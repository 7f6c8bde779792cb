"""treadle-export-hf: native GPT-2- and Llama-preset runs and a merged LoRA run load in
transformers with treadle's logits; importing an export gives the same parameters back.
The round trips need neither torch nor transformers; the from_pretrained checks do."""
import jax
import numpy as np
import pytest

from tests.conftest import run_cli
from treadle.hf import exporter
from treadle.hf import importer
from treadle.infer import sampler as sampler_lib
from treadle.model import decode
from treadle.model import lora

SMALL = ["--config.train.num_steps=4", "--config.train.eval_every=4",
         "--config.train.checkpoint_every=4", "--config.model.max_seq_len=128"]
LLAMA = ["--config.model.num_layers=2", "--config.model.embed_dim=32",
         "--config.model.mlp_hidden_dim=96", "--config.data.seq_len=32",
         "--config.train.batch_size=8", "--config.train.eval_batches=2"]
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and "
        "Juliet is the sun.\n")  # > 64 characters = tokens of the char tokenizer


def _train(workdir, text_file, config, *overrides):
  run_cli("treadle.train.main", "--config", config, "--workdir", workdir,
          f"--config.data.path={text_file}", *SMALL, *overrides)
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_file):
  root = tmp_path_factory.mktemp("export")
  gpt2 = _train(root / "gpt2", text_file, "configs/tiny.py")
  llama = _train(root / "llama", text_file, "configs/llama_char_cpu.py", *LLAMA)
  tuned = _train(root / "lora", text_file, "configs/tiny.py", f"--config.train.init_from={gpt2}",
                 "--config.finetune.lora_rank=4", "--config.finetune.lora_targets=attn,mlp",
                 "--config.optimizer.learning_rate=1e-2")
  return {"gpt2": gpt2, "llama": llama, "lora": tuned}


def _host(params):
  return jax.tree.map(np.asarray, jax.device_get(params))


def _treadle(run, merge):
  return sampler_lib.Sampler.from_workdir(run, devices=jax.devices()[:1], merge_lora=merge)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "lora"])
def test_import_of_an_export_gives_the_same_parameters(runs, kind, tmp_path):
  exporter.export(runs[kind], tmp_path / "hf", merge_lora=kind == "lora")
  importer.import_model(tmp_path / "hf", tmp_path / "back")
  original = _treadle(runs[kind], merge=True)
  back = _treadle(tmp_path / "back", merge=False)
  a, b = _host(original.params), _host(back.params)
  if kind == "lora":  # the merge really changed the base weights
    base = _host(_treadle(runs["gpt2"], merge=False).params)
    assert not np.array_equal(a["blocks"][0]["attn"]["qkv"]["w"],
                              base["blocks"][0]["attn"]["qkv"]["w"])
  V = original.cfg.model.vocab_size
  for path, leaf in jax.tree_util.tree_leaves_with_path(b):
    keys = [k.key for k in path]
    here = a
    for k in keys:
      here = here.get(k) if isinstance(here, dict) else None
    if here is None:  # GPT-2 has biases everywhere: a bias-free run exports zeros
      assert keys[-1] == "bias" and not leaf.any(), keys
    elif keys[0] in ("token_embed", "lm_head"):  # the padded vocabulary rows are not exported
      cut = (slice(None, V),) if keys[0] == "token_embed" else (slice(None), slice(None, V))
      np.testing.assert_array_equal(leaf[cut], here[cut], err_msg=str(keys))
    else:
      np.testing.assert_array_equal(leaf, here, err_msg=str(keys))


@pytest.mark.parametrize("kind,arch", [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM"),
                                       ("lora", "GPT2LMHeadModel")])
def test_transformers_loads_the_export_with_the_same_logits(runs, kind, arch, tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  out = tmp_path / "hf"
  run_cli("treadle.hf.export_cli", "--workdir", runs[kind], "--hf_dir", out,
          *(["--merge_lora"] if kind == "lora" else []))
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert type(model).__name__ == arch
  sampler = _treadle(runs[kind], merge=True)
  ids = sampler.tokenizer.encode(TEXT)
  assert tokenizer(TEXT)["input_ids"] == ids.tolist() and tokenizer.decode(ids) == TEXT
  with torch.no_grad():
    theirs = model(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()
  ours = decode.merge(sampler.graphdef, sampler.params)(ids[None])[0][0]
  V = sampler.cfg.model.vocab_size
  assert theirs.shape == (len(ids), V) and theirs.std() > 0.1
  np.testing.assert_allclose(np.asarray(ours)[:, :V], theirs, atol=1e-4, rtol=0)


def test_lora_export_needs_merge_lora_and_writes_nothing(runs, tmp_path):
  proc = run_cli("treadle.hf.export_cli", "--workdir", runs["lora"], "--hf_dir", tmp_path / "hf",
                 check=False)
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1 and "--merge_lora" in lines[0], proc.stderr
  assert not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == []
  assert lora.ADAPTER_KEY in _treadle(runs["lora"], merge=False).params["blocks"][0]["mlp"]["fc"]


def test_shards_past_the_size_limit(runs, tmp_path):
  exporter.export(runs["llama"], tmp_path / "hf", max_shard_bytes=10_000)
  shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
  assert len(shards) > 1 and (tmp_path / "hf" / "model.safetensors.index.json").exists()
  assert not (tmp_path / "hf" / "model.safetensors").exists()
  importer.import_model(tmp_path / "hf", tmp_path / "back")
  a = _host(_treadle(runs["llama"], merge=False).params)
  b = _host(_treadle(tmp_path / "back", merge=False).params)
  np.testing.assert_array_equal(a["blocks"][1]["mlp"]["fc"]["w"], b["blocks"][1]["mlp"]["fc"]["w"])
