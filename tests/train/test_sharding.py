"""Sharded training equals single-device training; bad meshes are one-line errors."""
import dataclasses

import jax
import numpy as np
import pytest

from tests import numerics
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib
from treadle.train import optimizer
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train.tasks import lm

MODEL = config_lib.section(
    "model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32,
    dropout=0.1)
OPT = config_lib.section("optimizer", warmup_steps=1)
BATCH = 16


def batches(n=3):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, MODEL.vocab_size, (n, BATCH, MODEL.max_seq_len + 1), dtype=np.int32)
  return [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]


def compile_train(shape, rules_name, devices, accum_steps=1, model=MODEL):
  """(jitted train step, initial state from seed 0, batch sharding) on the given mesh."""
  mesh = mesh_lib.make_mesh(shape, devices)
  rules = mesh_lib.rules(rules_name)
  tx = optimizer.build(OPT, 10)
  shardings = state_lib.shardings(model, tx, mesh, rules)
  state = state_lib.create(model, tx, 0, shardings)
  graphdef, _, _ = state_lib.model_graph(model)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  train, _ = step_lib.compile_steps(lm.LanguageModeling(), graphdef, tx,
                                    optimizer.schedule(OPT, 10), accum_steps,
                                    model.dropout > 0, rules, shardings, batch_sharding)
  return train, state, batch_sharding


def train_steps(shape, rules_name, devices, accum_steps=1, model=MODEL):
  """3 steps from seed 0 on the given mesh; returns (losses, params on host, state)."""
  train, state, batch_sharding = compile_train(shape, rules_name, devices, accum_steps, model)
  losses = []
  with jax.default_matmul_precision("highest"):
    for b in batches():
      state, m = train(state, {k: jax.device_put(v, batch_sharding) for k, v in b.items()})
      losses.append(float(m["train_loss"]))
  return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def single_device():
  return train_steps((1, 1, 1), "dp", jax.devices()[:1])


def _is_split(array) -> bool:
  return array.sharding.shard_shape(array.shape) != array.shape


@pytest.mark.devices(8)
@pytest.mark.parametrize("shape,rules,sharded_param", [
    ((8, 1, 1), "dp", None),
    ((1, 8, 1), "fsdp", "qkv"),
    ((2, 2, 2), "fsdp_tp", "qkv"),
])
def test_sharded_equals_single_device(single_device, shape, rules, sharded_param):
  assert len(jax.devices()) == 8
  losses, params, state = train_steps(shape, rules, jax.devices())
  if sharded_param:
    qkv = state.params["blocks"][0]["attn"]["qkv"]["w"]
    assert _is_split(qkv) and _is_split(state.opt_state[1][0].mu["blocks"][0]["attn"]["qkv"]["w"])
  else:
    assert state.params["blocks"][0]["attn"]["qkv"]["w"].sharding.is_fully_replicated
  ref_losses, ref_params, _ = single_device
  assert losses[0] != losses[-1]  # training moved
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  numerics.assert_trees_close(params, ref_params, rtol=1e-5)


LLAMA = dataclasses.replace(MODEL, position="rope", norm="rmsnorm", mlp="swiglu",
                            mlp_hidden_dim=96, num_kv_heads=2, tie_embeddings=False,
                            qk_norm=True, scan_layers=True, remat="dots")


@pytest.mark.devices(8)
def test_llama_style_fsdp_tp_equals_single_device():
  """Scanned, rematerialised GQA model with dropout: kv heads and layers stacked, split."""
  ref_losses, ref_params, _ = train_steps((1, 1, 1), "dp", jax.devices()[:1], model=LLAMA)
  losses, params, state = train_steps((2, 2, 2), "fsdp_tp", jax.devices(), model=LLAMA)
  kv = state.params["blocks"]["attn"]["kv"]["w"]  # [layers, embed, 2, kv heads, head dim]
  assert kv.shape[0] == LLAMA.num_layers and _is_split(kv)
  assert losses[0] != losses[-1]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  numerics.assert_trees_close(params, ref_params, rtol=1e-5)


@pytest.mark.devices(8)
def test_gradient_accumulation_matches_one_big_batch():
  model = dataclasses.replace(MODEL, dropout=0.0)  # masks differ per micro-batch otherwise
  one, params_one, _ = train_steps((8, 1, 1), "dp", jax.devices(), 1, model)
  two, params_two, _ = train_steps((8, 1, 1), "dp", jax.devices(), 2, model)
  np.testing.assert_allclose(one, two, rtol=1e-5)
  numerics.assert_trees_close(params_two, params_one, rtol=1e-5)


@pytest.mark.devices(8)
@pytest.mark.parametrize("shape,match", [
    ((3, 1, 1), "does not divide 8 devices"),
    ((-1, -1, 1), "at most one axis may be -1"),
    ((2, 2, 1), "uses 4 devices"),
])
def test_bad_mesh_shapes(shape, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.make_mesh(shape)


@pytest.mark.devices(8)
def test_indivisible_dimension_names_the_parameter():
  cfg = dataclasses.replace(MODEL, num_heads=2, embed_dim=32)  # 2 heads over tensor=4
  mesh = mesh_lib.make_mesh((1, 2, 4))
  tx = optimizer.build(OPT, 10)
  with pytest.raises(ValueError, match=r"attn/(qkv|out)/w dim \d \(size 2\) is not divisible .*tensor"):
    state_lib.shardings(cfg, tx, mesh, mesh_lib.rules("fsdp_tp"))


def test_unknown_rules_preset():
  with pytest.raises(ValueError, match="mesh.rules='zero3'"):
    mesh_lib.rules("zero3")
