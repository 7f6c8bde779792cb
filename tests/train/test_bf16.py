"""bf16 compute trains like fp32: fp32 master weights and optimizer state, fp32 loss."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from tests.conftest import run_cli
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib
from treadle.train import optimizer
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train.tasks import lm

STEPS = 200


def _train_losses(workdir, text_file, dtype) -> dict[int, float]:
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", f"--config.model.compute_dtype={dtype}",
          f"--config.train.num_steps={STEPS}", "--config.train.log_every=10",
          "--config.train.eval_every=100", "--config.train.checkpoint_every=200")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_bf16_train_losses_track_fp32_within_2_percent(tmp_path, text_file):
  fp32 = _train_losses(tmp_path / "fp32", text_file, "float32")
  bf16 = _train_losses(tmp_path / "bf16", text_file, "bfloat16")
  assert sorted(fp32) == sorted(bf16) and len(fp32) >= STEPS // 10
  assert fp32[max(fp32)] < 0.9 * fp32[min(fp32)]  # it learned: the comparison is not trivial
  for step in fp32:
    assert abs(bf16[step] - fp32[step]) <= 0.02 * fp32[step], (step, fp32[step], bf16[step])


def test_bf16_step_keeps_fp32_master_weights_optimizer_state_and_loss():
  model = config_lib.section("model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4,
                             embed_dim=32, compute_dtype="bfloat16")
  opt = config_lib.section("optimizer", warmup_steps=1)
  mesh = mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
  rules = mesh_lib.rules("dp")
  tx = optimizer.build(opt, 10)
  shardings = state_lib.shardings(model, tx, mesh, rules)
  state = state_lib.create(model, tx, 0, shardings)
  graphdef, _, _ = state_lib.model_graph(model)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  train, _ = step_lib.compile_steps(lm.LanguageModeling(), graphdef, tx,
                                    optimizer.schedule(opt, 10), 1, False, rules, shardings,
                                    batch_sharding)
  tokens = np.random.default_rng(0).integers(0, 61, (4, 17), dtype=np.int32)
  state, metrics = train(state, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
  floats = [x for x in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert metrics["train_loss"].dtype == jnp.float32
