"""bf16 compute trains like fp32: fp32 master weights and optimizer state, fp32 loss."""
import dataclasses

import jax
import jax.numpy as jnp

from tests.conftest import metric_rows, run_cli
from tests.train import test_sharding

STEPS = 200


def _train_losses(workdir, text_file, dtype) -> dict[int, float]:
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", f"--config.model.compute_dtype={dtype}",
          f"--config.train.num_steps={STEPS}", "--config.train.log_every=10",
          "--config.train.eval_every=100", "--config.train.checkpoint_every=200")
  rows = metric_rows(workdir)
  return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_bf16_train_losses_track_fp32_within_2_percent(tmp_path, text_file):
  fp32 = _train_losses(tmp_path / "fp32", text_file, "float32")
  bf16 = _train_losses(tmp_path / "bf16", text_file, "bfloat16")
  assert sorted(fp32) == sorted(bf16) and len(fp32) >= STEPS // 10
  assert fp32[max(fp32)] < 0.9 * fp32[min(fp32)]  # it learned: the comparison is not trivial
  for step in fp32:
    assert abs(bf16[step] - fp32[step]) <= 0.02 * fp32[step], (step, fp32[step], bf16[step])


def test_bf16_step_keeps_fp32_master_weights_optimizer_state_and_loss():
  model = dataclasses.replace(test_sharding.MODEL, dropout=0.0, compute_dtype="bfloat16")
  train, state, _ = test_sharding.compile_train((1, 1, 1), "dp", jax.devices()[:1], model=model)
  state, metrics = train(state, test_sharding.batches(1)[0])
  floats = [x for x in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert metrics["train_loss"].dtype == jnp.float32
