"""Mixture-of-experts blocks against plain per-token references: routing, capacity, the
router losses, cached decoding, LoRA on experts, parameter counts."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model import decode_helpers as helpers
from treadle.model import lora
from treadle.model import moe
from treadle.train import config as config_lib
from treadle.train import perf
from treadle.train import state as state_lib

MOE = config_lib.section(
    "model", vocab_size=61, max_seq_len=32, num_layers=2, num_heads=4, embed_dim=32,
    mlp="swiglu", num_experts=6, experts_per_token=2, moe_hidden_dim=24)


def _layer(cfg, seed=0):
  layer = moe.MoeMlp(cfg, nnx.Rngs(seed))
  # a router with spread-out logits: ties in top-k would make the reference ambiguous
  layer.router[...] = jax.random.normal(jax.random.key(seed + 1), layer.router.shape)
  return layer


def _x(cfg, shape=(3, 10), seed=2):
  return jax.random.normal(jax.random.key(seed), (*shape, cfg.embed_dim))


def _expert_np(layer, e: int, x: np.ndarray, kind: str) -> np.ndarray:
  fc, proj = np.asarray(layer.fc.value(jnp.float32)), np.asarray(layer.proj.value(jnp.float32))
  h = np.einsum("d,d...->...", x, fc[e])
  if kind == "swiglu":
    h = h[0] / (1 + np.exp(-h[0])) * h[1]
  else:
    h = np.asarray(jax.nn.gelu(h, approximate=True))
  return h @ proj[e]


def _reference(layer, cfg, x_BTD, keep=None) -> np.ndarray:
  """Loop over tokens and their top-k experts (numpy); keep[n, j]: choice j not dropped."""
  x = np.asarray(x_BTD, np.float64).reshape(-1, cfg.embed_dim)
  logits = x @ np.asarray(layer.router[...], np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.zeros_like(x)
  for n in range(x.shape[0]):
    chosen = np.argsort(-probs[n], kind="stable")[:cfg.experts_per_token]
    weights = probs[n, chosen]
    if cfg.router_norm_topk:
      weights = weights / weights.sum()
    for j, (e, w) in enumerate(zip(chosen, weights)):
      if keep is None or keep[n, j]:
        out[n] += w * _expert_np(layer, e, x[n], cfg.mlp)
    if layer.shared is not None:
      shared = np.asarray(layer.shared(jnp.asarray(x[n][None, None], jnp.float32)))[0, 0]
      gate = 1.0
      if layer.shared_gate is not None:
        gate = 1 / (1 + np.exp(-(x[n] @ np.asarray(layer.shared_gate[...]))[0]))
      out[n] += gate * shared
  return out.reshape(x_BTD.shape)


@pytest.mark.parametrize("impl", ["blocked", "ragged"])
@pytest.mark.parametrize("changes", [
    {},
    {"mlp": "gelu", "router_norm_topk": True, "experts_per_token": 3},
    {"num_shared_experts": 2, "shared_expert_gate": True},
    {"num_shared_experts": 1, "experts_per_token": 1},
])
def test_dropless_equals_a_per_token_loop(impl, changes, monkeypatch):
  cfg = dataclasses.replace(MOE, **changes)
  layer = _layer(cfg)
  local = moe._local_experts
  monkeypatch.setattr(moe, "_local_experts",
                      lambda *a: local(*a[:-1], impl))  # the grouped matmul under test
  x = _x(cfg)
  y, stats = layer(x)
  np.testing.assert_allclose(np.asarray(y), _reference(layer, cfg, x), rtol=1e-5, atol=1e-5)
  assert float(stats["dropped"]) == 0.0


def _capacity_keep(expert_NK: np.ndarray, num_experts: int, cap: int) -> np.ndarray:
  """The rule spelt out: first choices of all tokens in token order, then second choices..."""
  taken = [0] * num_experts
  keep = np.zeros(expert_NK.shape, bool)
  for j in range(expert_NK.shape[1]):
    for n in range(expert_NK.shape[0]):
      e = expert_NK[n, j]
      keep[n, j] = taken[e] < cap
      taken[e] += 1
  return keep


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.25])
def test_capacity_drops_exactly_the_assignments_the_rule_says(factor):
  cfg = dataclasses.replace(MOE, capacity_factor=factor)
  layer = _layer(cfg)
  x = _x(cfg)
  N, k, E = 30, cfg.experts_per_token, cfg.num_experts
  logits = np.asarray(x).reshape(N, -1) @ np.asarray(layer.router[...])
  routing, stats = moe.route(jnp.asarray(logits), k, False, factor)
  expert_NK = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  keep = _capacity_keep(expert_NK, E, moe.capacity(N, k, E, factor))
  assert 0 < (~keep).sum(), "the case must drop something"
  np.testing.assert_array_equal(np.asarray(routing.expert_NK), np.where(keep, expert_NK, -1))
  np.testing.assert_allclose(float(stats["dropped"]), (~keep).mean(), rtol=1e-6)
  y, _ = layer(x)
  np.testing.assert_allclose(np.asarray(y), _reference(layer, cfg, x, keep), rtol=1e-5,
                             atol=1e-5)
  assert math.ceil(factor * N * k / E) == moe.capacity(N, k, E, factor)


def test_router_losses_and_load_by_hand():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 4)).astype(np.float32) * 2
  _, stats = moe.route(jnp.asarray(logits), 2, False, 0.0)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  top2 = np.argsort(-probs, -1)[:, :2]
  counts = np.array([(top2 == e).sum() for e in range(4)])
  # E * sum_e (tokens choosing e / tokens) * (mean probability of e)
  aux = 4 * sum(counts[e] / 7 * probs[:, e].mean() for e in range(4))
  z = np.mean(np.log(np.exp(logits).sum(-1)) ** 2)
  np.testing.assert_allclose(float(stats["aux_loss"]), aux, rtol=1e-5)
  np.testing.assert_allclose(float(stats["z_loss"]), z, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(stats["load_E"]), counts / 14, rtol=1e-6)


@pytest.mark.parametrize("changes", [{}, {"scan_layers": True, "num_layers": 4, "moe_every": 2,
                                          "capacity_factor": 1.0}])
def test_cached_decoding_equals_recompute(changes):
  """Cached decoding is dropless: equal to a full forward with capacity off."""
  cfg = dataclasses.replace(MOE, num_shared_experts=1, **changes)
  graphdef, _, _ = state_lib.model_graph(cfg)
  params = state_lib.random_params(cfg, 0)
  if cfg.capacity_factor:
    dropless = dataclasses.replace(cfg, capacity_factor=0.0)
    reference_graph = state_lib.model_graph(dropless)[0]
    cached_logits = _cached_logits(cfg, graphdef, params)
    full_logits = _cached_logits(dropless, reference_graph, params)
    np.testing.assert_array_equal(cached_logits, full_logits)
  helpers.assert_cached_logits_match_full_forward(
      dataclasses.replace(cfg, capacity_factor=0.0),
      state_lib.model_graph(dataclasses.replace(cfg, capacity_factor=0.0))[0], params)


def _cached_logits(cfg, graphdef, params):
  cache = nnx.merge(graphdef, params).init_cache(2, cfg.max_seq_len)
  tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % cfg.vocab_size
  pad = jnp.zeros((2,), jnp.int32)
  logits, _ = helpers.encode(graphdef, params, tokens, jnp.int32(0), pad, cache)
  return np.asarray(logits)


def test_interleaved_blocks_scanned_equal_unrolled():
  """moe_every 2 scanned as groups of (dense, MoE) blocks == the same blocks unrolled."""
  cfg = dataclasses.replace(MOE, num_layers=4, moe_every=2)
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
  assert [cfg.is_moe_block(i) for i in range(4)] == [False, True, False, True]
  unrolled = state_lib.random_params(cfg, 0)
  stack = lambda *xs: jnp.stack(xs)
  scanned = dict(unrolled)
  scanned["blocks"] = {"blocks": {j: jax.tree.map(stack, *[unrolled["blocks"][2 * i + j]
                                                           for i in range(2)])
                                  for j in range(2)}}
  expected = jax.tree.map(lambda x: x.shape, state_lib.model_graph(scanned_cfg)[1])
  assert jax.tree.map(lambda x: x.shape, scanned) == expected
  tokens = jnp.arange(20, dtype=jnp.int32).reshape(2, 10) % cfg.vocab_size
  a = helpers.forward(state_lib.model_graph(cfg)[0], unrolled, tokens)
  b = helpers.forward(state_lib.model_graph(scanned_cfg)[0], scanned, tokens)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_lora_on_experts_trains_only_adapters_and_merges_exactly():
  cfg = dataclasses.replace(MOE, lora_rank=4, lora_alpha=8.0, lora_targets="mlp")
  params = state_lib.random_params(cfg, 0)
  mask = lora.trainable_mask(params)
  fc = params["blocks"][0]["mlp"]["fc"]
  assert set(fc) == {"w", "lora"} and fc["lora"]["a"].shape == (6, 32, 4)
  assert mask["blocks"][0]["mlp"]["fc"]["lora"]["b"] and not mask["blocks"][0]["mlp"]["fc"]["w"]
  # a non-zero B so the adapter changes the function
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.05 if "lora" in jax.tree_util.keystr(p) else v, params)
  graphdef, _, _ = state_lib.model_graph(cfg)
  tokens = jnp.arange(20, dtype=jnp.int32).reshape(2, 10) % cfg.vocab_size
  adapted = helpers.forward(graphdef, params, tokens)
  merged, plain_cfg = lora.merge(params, cfg)
  plain = helpers.forward(state_lib.model_graph(plain_cfg)[0], merged, tokens)
  base = helpers.forward(state_lib.model_graph(plain_cfg)[0], lora.base_params(params), tokens)
  np.testing.assert_allclose(np.asarray(adapted), np.asarray(plain), rtol=1e-4, atol=1e-5)
  assert not np.allclose(np.asarray(adapted), np.asarray(base), atol=1e-3)


@pytest.mark.parametrize("changes", [{}, {"num_shared_experts": 2, "shared_expert_gate": True,
                                          "num_layers": 4, "moe_every": 2}])
def test_num_params_counts_every_expert_and_active_counts_top_k(changes):
  cfg = dataclasses.replace(MOE, **changes)
  params = state_lib.random_params(cfg, 0)
  assert perf.num_params(cfg) == sum(x.size for x in jax.tree.leaves(params))
  per_expert = 3 * cfg.embed_dim * cfg.moe_hidden_dim
  moe_blocks = sum(cfg.is_moe_block(i) for i in range(cfg.num_layers))
  idle = moe_blocks * (cfg.num_experts - cfg.experts_per_token) * per_expert
  assert perf.num_params(cfg) - perf.num_params(cfg, active=True) == idle


def test_bfloat16_moe_runs_close_to_float32():
  cfg = dataclasses.replace(MOE, num_shared_experts=1)
  graphdef, _, _ = state_lib.model_graph(cfg)
  params = state_lib.random_params(cfg, 0)
  tokens = jnp.arange(20, dtype=jnp.int32).reshape(2, 10) % cfg.vocab_size
  full = helpers.forward(graphdef, params, tokens)
  half_graph = state_lib.model_graph(dataclasses.replace(cfg, compute_dtype="bfloat16"))[0]
  half = np.asarray(helpers.forward(half_graph, params, tokens))[..., :cfg.vocab_size]
  assert np.isfinite(half).all()
  np.testing.assert_allclose(half, np.asarray(full)[..., :cfg.vocab_size], atol=0.1)


@pytest.mark.parametrize("field,value,match", [
    ("num_experts", 1, "model.num_experts=1"),
    ("experts_per_token", 7, "model.experts_per_token=7"),
    ("moe_every", 3, "model.moe_every=3"),
    ("use_bias", True, "model.use_bias"),
])
def test_bad_moe_config_is_a_clear_error(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(MOE, **{field: value})
