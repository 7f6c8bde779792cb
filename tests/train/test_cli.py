"""treadle-train / treadle-sample as users run them: errors, outputs, end to end."""
import json

import pytest

from tests.conftest import metric_rows, run_cli

TINY = "configs/tiny.py"


def _train(workdir, text_file, *overrides, check=True, **kw):
  return run_cli("treadle.train.main", "--config", TINY, "--workdir", workdir,
                 f"--config.data.path={text_file}", *overrides, check=check, **kw)


@pytest.mark.parametrize("override,match", [
    ("--config.train.bogus=1", "bogus"),
    ("--config.train.num_steps=abc", "num_steps"),
    ("--config.model.num_heads=5", "model.embed_dim=32 is not divisible by model.num_heads=5"),
    ("--config.mesh.rules=zero3", "mesh.rules='zero3'"),
    ("--config.mesh.data=3", "does not divide"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, text_file, override, match):
  workdir = tmp_path / "run"
  proc = _train(workdir, text_file, override, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and match in lines[0], proc.stderr
  assert not workdir.exists()


def test_missing_data_file_names_it(tmp_path):
  proc = _train(tmp_path / "run", tmp_path / "missing.txt", check=False)
  assert proc.returncode == 2
  assert "missing.txt" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
  workdir = tmp_path_factory.mktemp("e2e") / "run"
  _train(workdir, text_file)
  return workdir


def test_train_writes_config_metrics_tensorboard_checkpoints(trained):
  config = json.loads((trained / "config.json").read_text())
  assert config["train"]["num_steps"] == 20 and config["model"]["vocab_size"] > 0
  rows = metric_rows(trained)
  assert all("step" in r for r in rows)
  train_rows = [r for r in rows if "train_loss" in r]
  assert {"learning_rate", "tokens_per_second"} <= set(train_rows[0])
  assert [r["step"] for r in rows if "val_loss" in r] == [10, 20]
  assert "test_loss" in rows[-1]
  assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
  assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["10", "20"]
  assert (trained / "tokenizer.json").exists() and (trained / "sharding.json").exists()


SAMPLE_ARGS = ["--prompt", "ROMEO:", "--prompt", "KING:", "--max_new_tokens", "40",
               "--num_samples", "2", "--seed", "7", "--temperature", "0.9", "--top_k", "10"]


@pytest.fixture(scope="module")
def sampled(trained) -> str:
  """treadle-sample's stdout for SAMPLE_ARGS (batch path), once for the tests comparing to it."""
  return run_cli("treadle.infer.cli", "--workdir", trained, *SAMPLE_ARGS).stdout


def test_sample_in_another_process_is_reproducible(trained, sampled):
  again = run_cli("treadle.infer.cli", "--workdir", trained, *SAMPLE_ARGS)
  assert again.stdout == sampled and sampled.count("ROMEO:") == 2 and sampled.count("KING:") == 2
  other = run_cli("treadle.infer.cli", "--workdir", trained,
                  *[("8" if a == "7" else a) for a in SAMPLE_ARGS])  # --seed 8
  assert other.stdout != sampled


def test_stream_prints_what_the_batch_path_prints(trained, sampled):
  streamed = run_cli("treadle.infer.cli", "--workdir", trained, *SAMPLE_ARGS, "--stream").stdout
  assert sampled.count("---------------") == 4
  assert len(set(sampled.split("---------------"))) == 5  # four different samples (+ the end)
  assert streamed == sampled


def test_sample_json_output(trained):
  proc = run_cli("treadle.infer.cli", "--workdir", trained, "--prompt", "a", "--prompt", "bc",
                 "--max_new_tokens", "30", "--json", "--top_p", "0.9", "--ignore_eos")
  out = json.loads(proc.stdout)
  assert out["new_tokens"] == 60 and out["tokens_per_second"] > 0
  assert [s["prompt"] for s in out["samples"]] == ["a", "bc"]
  assert all(s["num_tokens"] == 30 for s in out["samples"])


@pytest.mark.parametrize("args,match", [
    (["--prompt", ""], "empty prompt"),
    (["--prompt", "€uro"], "'€'"),
    (["--temperature", "-1"], "temperature"),
    (["--top_k", "-2"], "top_k"),
    (["--top_p", "1.5"], "top_p"),
    (["--top_p", "0"], "top_p"),
    (["--step", "999"], "no checkpoint step 999"),
    (["--dtype", "float16"], "--dtype"),
    # was "invalid literal for int() with base 10: 'a'", naming no flag
    (["--mesh_shape", "a,b"], "--mesh_shape='a,b' must be three comma-separated integers"),
    (["--mesh_shape", "1,1"], "--mesh_shape='1,1' must be three comma-separated integers"),
    (["--mesh_shape", "1000,1,1"], "--mesh_shape='1000,1,1': mesh shape"),
    (["--mesh_shape", "0,1,1"], "sizes must be positive or -1"),
    (["--rules", "tp"], "--rules='tp' must be one of dp, fsdp, fsdp_tp"),  # was mesh.rules=
])
def test_sample_bad_input_exit_2(trained, args, match):
  proc = run_cli("treadle.infer.cli", "--workdir", trained, *args, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr


def test_sample_in_bfloat16_casts_the_weights_at_load(trained):
  import jax
  import numpy as np
  from treadle.infer.sampler import Sampler
  fp32 = Sampler.from_workdir(trained)
  bf16 = Sampler.from_workdir(trained, dtype="bfloat16")
  assert (fp32.cfg.model.compute_dtype, bf16.cfg.model.compute_dtype) == ("float32", "bfloat16")
  as_bf16 = lambda x: np.asarray(x.astype(jax.numpy.bfloat16)).view(np.uint16)
  assert {x.dtype.name for x in jax.tree.leaves(fp32.params)} == {"float32"}
  for got, want in zip(jax.tree.leaves(bf16.params), jax.tree.leaves(fp32.params)):
    assert got.dtype.name == "bfloat16" and got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), as_bf16(want))
  built = Sampler(fp32.cfg, fp32.tokenizer, fp32.params, fp32.mesh, fp32.step, dtype="bfloat16")
  for got, want in zip(jax.tree.leaves(built.params), jax.tree.leaves(bf16.params)):
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16),
                                  np.asarray(want).view(np.uint16))
  out = bf16.generate("ROMEO:", max_new_tokens=24, temperature=0.0, ignore_eos=True)[0]
  assert len(out.token_ids) == 24
  cli = run_cli("treadle.infer.cli", "--workdir", trained, "--prompt", "ROMEO:", "--dtype",
                "bfloat16", "--max_new_tokens", "24", "--temperature", "0", "--ignore_eos")
  assert cli.stdout == "ROMEO:" + out.text + "\n---------------\n"


def test_sample_without_checkpoint(tmp_path):
  proc = run_cli("treadle.infer.cli", "--workdir", tmp_path, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: {str(tmp_path)!r} is not a treadle run directory (no config.json)")


def test_incompatible_workdir_is_refused_naming_keys(trained, text_file):
  before = (trained / "config.json").read_text()
  proc = _train(trained, text_file, "--config.model.embed_dim=64", "--config.data.seq_len=16",
                check=False)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert "model.embed_dim" in line and "data.seq_len" in line
  assert (trained / "config.json").read_text() == before


def test_llama_preset_trains_sharded_fsdp_tp_and_samples(tmp_path, text_file):
  """configs/llama_char_cpu.py on 8 simulated devices (data 2 x fsdp 2 x tensor 2)."""
  workdir = tmp_path / "llama"
  from treadle.configs import llama_char_cpu
  from treadle.train import config as config_lib
  from treadle.train import loop
  c = llama_char_cpu.get_config()
  c.data.path = str(text_file)
  c.mesh.update(data=2, fsdp=2, tensor=2, rules="fsdp_tp")  # this process's 8 CPU devices
  c.model.num_layers = 2  # the preset's blocks, fewer of them (the layout is per block)
  c.train.update(num_steps=6, eval_every=6, eval_batches=2, checkpoint_every=6, batch_size=8)
  loop.train(config_lib.split(c), workdir)  # training in this process; sampling: the CLI
  layout = json.loads((workdir / "sharding.json").read_text())
  assert "tensor" in json.dumps(layout) and "fsdp" in json.dumps(layout)
  rows = metric_rows(workdir)
  assert "test_loss" in rows[-1]
  sample = run_cli("treadle.infer.cli", "--workdir", workdir, "--prompt", "ROMEO:", "--max_new_tokens",
                   "20", "--json", "--mesh_shape", "1,1,2", "--rules", "fsdp_tp", "--ignore_eos",
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  out = json.loads(sample.stdout)
  assert out["samples"][0]["num_tokens"] == 20
