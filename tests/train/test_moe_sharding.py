"""MoE training sharded over the expert axis (with data and fsdp, under every rules preset)
equals single-device training; experts are split over `expert`."""
import dataclasses

import jax
import numpy as np
import pytest

from tests import numerics
from tests.train import test_sharding as sharding
from treadle.train import config as config_lib

MOE = config_lib.section(
    "model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32,
    mlp="swiglu", num_experts=8, experts_per_token=2, moe_hidden_dim=24, num_shared_experts=1,
    shared_expert_gate=True, router_z_loss_coef=0.01, dropout=0.1)


@pytest.fixture(scope="module")
def single_device():
  return sharding.train_steps((1, 1, 1, 1), "dp", jax.devices()[:1], model=MOE)


def _expert_split(array, parts: int) -> bool:
  return array.sharding.shard_shape(array.shape)[0] == array.shape[0] // parts


@pytest.mark.devices(8)
@pytest.mark.parametrize("shape,rules", [
    ((4, 1, 1, 2), "dp"),
    ((1, 2, 1, 4), "fsdp"),
    ((1, 2, 2, 2), "fsdp_tp"),
    ((2, 1, 1, 4), "fsdp_tp"),
])
def test_expert_parallel_equals_single_device(single_device, shape, rules):
  losses, params, state = sharding.train_steps(shape, rules, jax.devices(), model=MOE)
  expert = shape[3]
  fc = state.params["blocks"][0]["mlp"]["fc"]["w"]
  assert _expert_split(fc, expert)
  assert _expert_split(state.opt_state[1][0].mu["blocks"][0]["mlp"]["fc"]["w"], expert)
  ref_losses, ref_params, _ = single_device
  assert losses[0] != losses[-1]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  numerics.assert_trees_close(params, ref_params, rtol=1e-5)


@pytest.mark.devices(8)
def test_scanned_interleaved_moe_with_capacity_equals_single_device():
  """moe_every 2 scanned in groups, capacity drops (global-batch rule), remat: sharded
  over data x expert as on one device."""
  model = dataclasses.replace(MOE, num_layers=4, moe_every=2, scan_layers=True, remat="dots",
                              capacity_factor=1.0, num_shared_experts=0)
  ref_losses, ref_params, _ = sharding.train_steps((1, 1, 1, 1), "dp", jax.devices()[:1],
                                                   model=model)
  losses, params, _ = sharding.train_steps((2, 1, 1, 4), "fsdp", jax.devices(), model=model)
  assert losses[0] != losses[-1]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  numerics.assert_trees_close(params, ref_params, rtol=1e-5)
