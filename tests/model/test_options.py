"""Decoder options: cache == recompute for each, scan/remat == plain, RoPE, GQA, soft-cap, errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from treadle.model import gpt
from treadle.model import lora
from tests import numerics
from tests.model import decode_helpers as helpers
from treadle.train import state as state_lib
from treadle.train import config as config_lib

BASE = config_lib.section(
    "model", vocab_size=61, max_seq_len=32, num_layers=2, num_heads=4, embed_dim=32)
LLAMA = dataclasses.replace(BASE, position="rope", norm="rmsnorm", mlp="swiglu",
                            mlp_hidden_dim=48, num_kv_heads=2, tie_embeddings=False,
                            qk_norm=True)
VARIANTS = {
    "llama": LLAMA,
    "llama_scanned": dataclasses.replace(LLAMA, scan_layers=True),
    "mqa_bias_learned": dataclasses.replace(BASE, num_kv_heads=1, use_bias=True),
    "rope_softcap": dataclasses.replace(BASE, position="rope", logit_softcap=3.0),
    "lora": dataclasses.replace(LLAMA, lora_rank=4, lora_targets="attn,mlp"),
    # the options Hugging Face imports need: Qwen2's q/k/v-only biases, an explicit head
    # width (4 x 16 != 32), a norm epsilon, Llama 3.1's rope scaling
    "qwen_llama3": dataclasses.replace(LLAMA, qk_norm=False, qkv_bias=True, attn_head_dim=16,
                                       norm_eps=1e-5, rope_scaling="llama3",
                                       rope_original_max_len=8),
}
def _params(cfg, seed=0):
  """Random parameters; LoRA's zero-initialised B is perturbed so adapters matter."""
  params = state_lib.random_params(cfg, seed)
  rng = np.random.default_rng(seed + 100)  # on the host: a jitted jax.random costs a compile
  params = jax.tree.map(lambda p, t: p + 0.05 * rng.standard_normal(p.shape, np.float32)
                        if t else p, params, lora.trainable_mask(params))
  return state_lib.model_graph(cfg)[0], params


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cache_matches_recompute(name):
  cfg = VARIANTS[name]
  graphdef, params = _params(cfg)
  helpers.assert_cached_logits_match_full_forward(cfg, graphdef, params)
  steps = cfg.max_seq_len - helpers.PROMPT_LEN - 1
  np.testing.assert_array_equal(helpers.generate(graphdef, params, steps, cached=True),
                                helpers.generate(graphdef, params, steps, cached=False))


def test_llama_cache_matches_recompute_sharded_fsdp_tp():
  graphdef, params = _params(LLAMA)
  sharded = helpers.shard(LLAMA, params)
  kv = sharded["blocks"][0]["attn"]["kv"]["w"]
  assert kv.sharding.shard_shape(kv.shape) != kv.shape  # kv heads really split over tensor
  helpers.assert_cached_logits_match_full_forward(LLAMA, graphdef, sharded)
  np.testing.assert_array_equal(helpers.generate(graphdef, sharded, 12, cached=True),
                                helpers.generate(graphdef, params, 12, cached=True))


def _stack_blocks(params):
  """Unscanned params (blocks as a list) -> the scanned layout (leading layers axis)."""
  blocks = params["blocks"]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[blocks[i] for i in sorted(blocks)])
  return {**params, "blocks": stacked}


def _loss_and_grads(cfg, params, tokens):
  graphdef = state_lib.model_graph(cfg)[0]
  def loss(p):
    logits, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
    return gpt.cross_entropy(logits, tokens[:, 1:])
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat", ["none", "full", "dots", "dots_no_batch"])
def test_scan_and_remat_equal_plain_layers(remat):
  cfg = dataclasses.replace(LLAMA, num_layers=3)
  _, params = _params(cfg)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 17)))
  loss, grads = _loss_and_grads(cfg, params, tokens)
  variant = dataclasses.replace(cfg, scan_layers=True, remat=remat)
  loss_v, grads_v = _loss_and_grads(variant, _stack_blocks(params), tokens)
  np.testing.assert_allclose(loss_v, loss, rtol=1e-6)
  numerics.assert_trees_close(grads_v, _stack_blocks(grads), rtol=1e-5)
  if remat != "none":  # remat without scan too
    loss_r, grads_r = _loss_and_grads(dataclasses.replace(cfg, remat=remat), params, tokens)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    numerics.assert_trees_close(grads_r, grads, rtol=1e-5)


def test_rope_attention_depends_on_relative_positions_only():
  cfg = dataclasses.replace(LLAMA, max_seq_len=64)
  model = cfg.make(nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 12)))
  positions = jnp.arange(12)[None]
  at_zero, _ = model(tokens, positions_BT=positions)
  shifted, _ = model(tokens, positions_BT=positions + 37)
  np.testing.assert_allclose(shifted, at_zero, rtol=1e-4, atol=1e-4)
  learned = dataclasses.replace(cfg, position="learned").make(nnx.Rngs(0))
  a, _ = learned(tokens, positions_BT=positions)
  b, _ = learned(tokens, positions_BT=positions + 37)
  assert not np.allclose(a, b, atol=1e-3)  # the check above can tell positions apart


def test_gqa_with_repeated_kv_heads_equals_multi_head():
  """GQA is multi-head attention whose query heads share repeated key/value heads."""
  gqa = dataclasses.replace(BASE, num_kv_heads=2, position="rope")
  mha = dataclasses.replace(gqa, num_kv_heads=4)
  _, p = _params(gqa)
  p_mha = dict(p, blocks={})
  for i in range(gqa.num_layers):
    attn = p["blocks"][i]["attn"]
    kv_rep = jnp.repeat(attn["kv"]["w"], 2, axis=2)    # each kv head serves 2 query heads
    qkv = jnp.concatenate([attn["q"]["w"][:, None], kv_rep], axis=1)  # [D, 3, H, K]
    p_mha["blocks"][i] = {**p["blocks"][i], "attn": {"qkv": {"w": qkv}, "out": attn["out"]}}
  mha_shape = state_lib.model_graph(mha)[1]["blocks"][0]["attn"]["qkv"]["w"].shape
  assert p_mha["blocks"][0]["attn"]["qkv"]["w"].shape == mha_shape
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, BASE.vocab_size, (2, 20)))
  np.testing.assert_allclose(helpers.forward(state_lib.model_graph(mha)[0], p_mha, tokens),
                             helpers.forward(state_lib.model_graph(gqa)[0], p, tokens),
                             rtol=1e-5, atol=1e-5)


def test_softcap_bounds_logits_and_untied_head_is_used():
  cfg = dataclasses.replace(BASE, logit_softcap=2.0, tie_embeddings=False)
  graphdef, params = _params(cfg)
  params["lm_head"] = params["lm_head"] * 1000.0
  logits = np.asarray(helpers.forward(graphdef, params, jnp.ones((1, 8), jnp.int32)))
  real = logits[..., :cfg.vocab_size]
  assert np.abs(real).max() <= 2.0 and np.abs(real).max() > 1.9


def test_lora_merge_equals_adapters_and_zero_init_is_identity():
  cfg = VARIANTS["lora"]
  graphdef, params = _params(cfg)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 20)))
  with_adapters = helpers.forward(graphdef, params, tokens)
  merged, merged_cfg = lora.merge(params, cfg)
  assert merged_cfg.lora_rank == 0 and "lora" not in merged["blocks"][0]["attn"]["q"]
  np.testing.assert_allclose(helpers.forward(state_lib.model_graph(merged_cfg)[0], merged, tokens),
                             with_adapters, rtol=1e-5, atol=1e-5)
  base = lora.base_params(params)
  base_logits = helpers.forward(state_lib.model_graph(merged_cfg)[0], base, tokens)
  assert not np.allclose(base_logits, with_adapters, atol=1e-3)  # adapters change the model
  fresh = state_lib.random_params(cfg, 0)  # B = 0: adapters start as no-ops
  np.testing.assert_allclose(helpers.forward(graphdef, lora.with_adapters(base, fresh), tokens),
                             base_logits, rtol=1e-6, atol=1e-6)


def test_scanned_lora_merge():
  cfg = dataclasses.replace(VARIANTS["lora"], scan_layers=True)
  graphdef, params = _params(cfg)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 10)))
  merged, merged_cfg = lora.merge(params, cfg)
  np.testing.assert_allclose(helpers.forward(state_lib.model_graph(merged_cfg)[0], merged, tokens),
                             helpers.forward(graphdef, params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(num_kv_heads=3), "num_heads=4 is not divisible by model.num_kv_heads=3"),
    (dict(position="rope", num_heads=8, embed_dim=24), "even head dim"),
    (dict(lora_rank=2, lora_targets="attn,ffn"), "lora_targets"),
    (dict(lora_rank=2, num_kv_heads=2, lora_targets="qkv"), r"\['qkv'\] not in this model"),
])
def test_bad_combinations_are_one_line_errors(change, message):
  with pytest.raises(ValueError, match=message) as e:
    dataclasses.replace(BASE, **change)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, message", [
    (dict(position="alibi"), "model.position='alibi' is not one of"),
    (dict(norm="batchnorm"), "model.norm="),
    (dict(mlp="relu"), "model.mlp="),
    (dict(remat="some"), "model.remat="),
    (dict(logit_softcap=-1.0), "model.logit_softcap=-1.0 must be >= 0"),
])
def test_bad_values_of_one_key_are_one_line_errors(change, message):
  # one key's own choices and ranges are declared in configs/base.py and checked by split()
  with pytest.raises(ValueError, match=message) as e:
    config_lib.section("model", **change)
  assert "\n" not in str(e.value)


def test_dropout_mask_rate_independence_and_determinism():
  from treadle.model import layers
  x = jnp.ones((32, 128, 96))
  y = np.asarray(layers.dropout(x, 0.2, jax.random.key(0)))
  kept = y != 0
  assert abs(kept.mean() - 0.8) < 5 * np.sqrt(0.16 / kept.size)  # 5 sigma
  np.testing.assert_allclose(y[kept], 1.25)  # inverted dropout: kept values scaled up
  flat = kept.reshape(-1).astype(float)
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02  # neighbours independent
  again = np.asarray(layers.dropout(x, 0.2, jax.random.key(0)))
  other = np.asarray(layers.dropout(x, 0.2, jax.random.key(1))) != 0
  np.testing.assert_array_equal(again, y)
  assert abs((other == kept).mean() - (0.8**2 + 0.2**2)) < 0.01  # another key: independent
  assert np.asarray(layers.dropout(x, 0.2, None) == x).all()
