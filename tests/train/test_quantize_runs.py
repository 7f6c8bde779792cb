"""int8 weight-only sampling end to end: treadle-quantize's run directory, treadle-sample
--quantize int8 and the Sampler, against a tiny trained run."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_cli
from treadle.infer import sampler as sampler_lib
from treadle.model import quant

# embed_dim 64: at the tiny config's 32 the embeddings are a fifth of the weights and int8
# leaves 0.37x of the bytes; the CPU recipe's (128 wide, 4 layers) leaves 0.27x
WIDE = "--config.model.embed_dim=64"
SAMPLE = ("--prompt", "ROMEO:", "--prompt", "KING:", "--max_new_tokens", "24",
          "--temperature", "0", "--json")
is_q = lambda x: isinstance(x, quant.QWeight)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
  workdir = tmp_path_factory.mktemp("quant") / "run"
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", WIDE)
  return workdir


@pytest.fixture(scope="module")
def quantized(trained):
  out = trained.parent / "run-int8"
  run_cli("treadle.infer.quantize", "--workdir", trained, "--out", out)
  return out


def _sample(workdir, *extra) -> dict:
  return json.loads(run_cli("treadle.infer.cli", "--workdir", workdir, *SAMPLE,
                            *extra).stdout)


def test_quantized_run_loads_the_same_int8_arrays_without_the_float_run(trained, tmp_path):
  source, out = tmp_path / "source", tmp_path / "int8"
  shutil.copytree(trained, source)
  run_cli("treadle.infer.quantize", "--workdir", source, "--out", out)
  # the arrays' bytes: Orbax's OCDBT data files (d/); its metadata, tens of KB set by the
  # tree and the stack's version rather than the weights, is left out
  on_disk = sum(f.stat().st_size for f in (out / "checkpoints").rglob("*")
                if f.is_file() and f.parent.name == "d")
  shutil.rmtree(source)  # the quantized run needs nothing of the float one
  loaded = sampler_lib.Sampler.from_workdir(out).params
  at_load = sampler_lib.Sampler.from_workdir(trained, quantize="int8").params
  assert jax.tree.structure(loaded) == jax.tree.structure(at_load)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(at_load)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  assert sum(is_q(x) for x in jax.tree.leaves(loaded, is_leaf=is_q)) >= 4
  float_bytes = quant.weights_bytes(sampler_lib.Sampler.from_workdir(trained).params)
  print(f"int8 data on disk {on_disk:,} bytes, float weights {float_bytes:,}")
  assert on_disk < 0.35 * float_bytes  # int8 matrices, float32 scales, embeddings and norms


def test_greedy_text_and_weights_bytes(trained, quantized):
  fp32, at_load, from_run = _sample(trained), _sample(trained, "--quantize", "int8"), \
      _sample(quantized)
  assert [s["text"] for s in from_run["samples"]] == [s["text"] for s in at_load["samples"]]
  assert from_run["weights_bytes"] == at_load["weights_bytes"]
  assert from_run["weights_bytes"] <= 0.35 * fp32["weights_bytes"]
  params = sampler_lib.Sampler.from_workdir(trained).params
  assert fp32["weights_bytes"] == sum(x.nbytes for x in jax.tree.leaves(params))


def test_bfloat16_keeps_int8_values_and_float32_scales(trained):
  sampler = sampler_lib.Sampler.from_workdir(trained, dtype="bfloat16", quantize="int8")
  leaves = jax.tree.leaves(sampler.params, is_leaf=is_q)
  weights = [x for x in leaves if is_q(x)]
  assert weights and all(w.q.dtype == jnp.int8 and w.scale.dtype == jnp.float32
                         for w in weights)
  assert all(x.dtype == jnp.bfloat16 for x in leaves if not is_q(x))
  float32 = sampler_lib.Sampler.from_workdir(trained, quantize="int8")
  for a, b in zip(weights, [x for x in jax.tree.leaves(float32.params, is_leaf=is_q)
                            if is_q(x)]):
    assert np.array_equal(np.asarray(a.q), np.asarray(b.q))  # quantized before the cast
  assert sampler.generate("ROMEO:", 8, temperature=0)[0].token_ids


def _refused(*args, match):
  proc = run_cli("treadle.infer.quantize", *args, check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and match in errors[0], proc.stderr
  return proc


def test_bad_input_is_one_line_and_writes_nothing(trained, quantized, tmp_path):
  out = tmp_path / "out"
  _refused("--workdir", trained, match="--out is required")
  _refused("--out", out, match="--workdir is required")
  _refused("--workdir", tmp_path / "absent", "--out", out, match="not a treadle run directory")
  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(trained / name, no_checkpoint / name)
  _refused("--workdir", no_checkpoint, "--out", out, match="no checkpoints")
  _refused("--workdir", quantized, "--out", out, match="already quantized")
  _refused("--workdir", trained, "--out", out, "--step", "7", match="no checkpoint step 7")
  _refused("--workdir", trained, "--out", out, "--step", "x", match="--step='x'")
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep.txt").write_text("mine")
  _refused("--workdir", trained, "--out", taken, match="exists and is not empty")
  assert [p.name for p in taken.iterdir()] == ["keep.txt"]
  sample = run_cli("treadle.infer.cli", "--workdir", trained, "--quantize", "int4", check=False)
  assert sample.returncode == 2 and "int4" in sample.stderr.strip().splitlines()[-1]


def test_float_readers_refuse_a_quantized_run(trained, quantized, tmp_path):
  """Fine-tuning from it or exporting it needs float weights."""
  from treadle.train import checkpoint
  from treadle.train import config as config_lib
  with pytest.raises(ValueError, match="int8 weights"):
    checkpoint.load_params(quantized, None, config_lib.from_run(quantized).model,
                           lambda abstract, specs: jax.tree.map(lambda _: None, abstract))
  hf_dir = tmp_path / "hf"
  proc = run_cli("treadle.hf.export_cli", "--workdir", quantized, "--hf_dir", hf_dir,
                 check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "int8 weights" in errors[0], proc.stderr
  assert not hf_dir.exists()


def test_a_quantized_draft_keeps_the_targets_greedy_text(trained, quantized):
  """A treadle-quantize run drafts with its int8 matrices; --quantize int8 quantizes a float
  draft to the same arrays."""
  plain = _sample(trained)
  drafted = _sample(trained, "--draft_workdir", quantized, "--num_draft_tokens", "3")
  assert [s["text"] for s in drafted["samples"]] == [s["text"] for s in plain["samples"]]
  assert drafted["acceptance_rate"] > 0.5  # the same model at int8 mostly agrees
  from_run = sampler_lib.Sampler.from_workdir(trained, draft_workdir=quantized).draft.params
  at_load = sampler_lib.Sampler.from_workdir(trained, draft_workdir=trained,
                                             quantize="int8").draft.params
  assert jax.tree.structure(from_run) == jax.tree.structure(at_load)
  assert sum(is_q(x) for x in jax.tree.leaves(from_run, is_leaf=is_q)) >= 4
  for a, b in zip(jax.tree.leaves(from_run), jax.tree.leaves(at_load)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.devices(8)
def test_sharded_int8_samples_as_one_device(trained, quantized):
  """fsdp_tp on 8 devices: q split as its weight, the scales unsplit on contracted axes."""
  one = sampler_lib.Sampler.from_workdir(quantized, None, (1, 1, 1), "dp", jax.devices()[:1])
  expected = [c.token_ids for c in one.generate(["ROMEO:", "KING:"], 16, temperature=0)]
  for workdir, quantize in ((quantized, None), (trained, "int8")):
    sharded = sampler_lib.Sampler.from_workdir(workdir, None, (2, 2, 2), "fsdp_tp",
                                               quantize=quantize)
    weights = [x for x in jax.tree.leaves(sharded.params, is_leaf=is_q) if is_q(x)]
    assert any(not w.q.sharding.is_fully_replicated for w in weights)
    out = sharded.generate(["ROMEO:", "KING:"], 16, temperature=0)
    assert [c.token_ids for c in out] == expected
