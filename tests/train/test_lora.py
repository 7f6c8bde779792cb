"""LoRA fine-tuning end to end: frozen base, trained adapters, merged sampling == adapters."""
import jax
import numpy as np
import pytest

from treadle.infer import sampler as sampler_lib
from treadle.model import lora
from tests.conftest import run_cli


def _train(workdir, text_file, *overrides, check=True):
  return run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
                 f"--config.data.path={text_file}", *overrides, check=check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_file):
  root = tmp_path_factory.mktemp("lora")
  source, tuned = root / "source", root / "tuned"
  _train(source, text_file, "--config.model.position=rope", "--config.model.num_kv_heads=2")
  _train(tuned, text_file, "--config.model.position=rope", "--config.model.num_kv_heads=2",
         f"--config.train.init_from={source}", "--config.finetune.lora_rank=4",
         "--config.finetune.lora_targets=attn,mlp", "--config.optimizer.learning_rate=1e-2",
         "--config.train.num_steps=10")
  return source, tuned


def test_base_is_frozen_and_adapters_trained(runs):
  source, tuned = runs
  src = sampler_lib.Sampler.from_workdir(source).params
  params = sampler_lib.Sampler.from_workdir(tuned).params
  np.testing.assert_equal(jax.device_get(lora.base_params(params)), jax.device_get(src))
  adapters = [x for x, t in zip(jax.tree.leaves(params),
                                jax.tree.leaves(lora.trainable_mask(params))) if t]
  assert len(adapters) == 2 * 5 * 2  # a and b of q, kv, out, fc, proj in each of 2 layers
  b = params["blocks"][0]["attn"]["q"]["lora"]["b"]
  assert np.abs(np.asarray(b)).max() > 0  # B started at zero: it was trained


def test_merged_sampling_equals_adapter_sampling(runs):
  _, tuned = runs
  args = dict(max_new_tokens=40, temperature=0.0, seed=0)
  prompts = ["ROMEO:", "to be or"]
  adapter = sampler_lib.Sampler.from_workdir(tuned)
  merged = sampler_lib.Sampler.from_workdir(tuned, merge_lora=True)
  assert merged.cfg.model.lora_rank == 0 and "lora" not in merged.params["blocks"][0]["mlp"]["fc"]
  for a, m in zip(adapter.generate(prompts, **args), merged.generate(prompts, **args)):
    assert a.token_ids == m.token_ids
  base = sampler_lib.Sampler.from_workdir(runs[0])
  q_base = np.asarray(base.params["blocks"][0]["attn"]["q"]["w"])
  q_merged = np.asarray(merged.params["blocks"][0]["attn"]["q"]["w"])
  assert np.abs(q_merged - q_base).max() > 1e-4  # the merge really folded trained adapters in
  cli = run_cli("treadle.infer.cli", "--workdir", tuned, "--prompt", "ROMEO:",
                "--max_new_tokens", "8", "--merge_lora", "--temperature", "0", "--ignore_eos")
  library = merged.generate(["ROMEO:"], max_new_tokens=8, temperature=0.0, ignore_eos=True)[0]
  assert len(library.token_ids) == 8
  assert cli.stdout == f"ROMEO:{library.text}\n---------------\n"


def test_lora_without_a_source_is_a_one_line_error(tmp_path, text_file):
  bad = _train(tmp_path / "bad", text_file, "--config.finetune.lora_rank=4", check=False)
  assert bad.returncode == 2
  assert "finetune.lora_rank needs train.init_from" in bad.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "bad").exists()
