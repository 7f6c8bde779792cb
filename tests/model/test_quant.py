"""int8 weight-only quantization (model/quant.py): the matmul's error bound, which matrices
are int8, and the quantized model against the float one."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from treadle.model import quant
from treadle.train import config as config_lib
from treadle.train import state as state_lib


def _weight(rng, shape, n_in):
  """Output channels of magnitudes 1e-3..10: one scale for the whole tensor (or scales over
  the wrong axes) gives the small channels errors far past their own bound."""
  w = rng.standard_normal(shape).astype(np.float32)
  return w * (10.0 ** rng.uniform(-3, 1, shape[n_in:])).astype(np.float32)


# rows (5, 3): a dot; (1, 1): one token, the multiply-reduce form
@pytest.mark.parametrize("rows", [(5, 3), (1, 1)])
@pytest.mark.parametrize("shape,n_in", [((48, 3, 4, 8), 1), ((4, 8, 40), 2), ((40, 72), 1)])
def test_int8_matmul_error_is_within_half_a_step_per_output(shape, n_in, rows):
  rng = np.random.default_rng(0)
  w = _weight(rng, shape, n_in)
  x = rng.standard_normal((*rows, *shape[:n_in])).astype(np.float32)
  qw = quant.quantize(jnp.asarray(w), tuple(range(n_in)))
  assert qw.q.dtype == jnp.int8 and qw.scale.shape == (1,) * n_in + shape[n_in:]
  y = np.asarray(quant.contract(jnp.asarray(x), qw, n_in, jnp.float32), np.float64)
  reference = np.tensordot(x.astype(np.float64), w.astype(np.float64), n_in)
  scale = np.asarray(qw.scale, np.float64).reshape(shape[n_in:])
  abs_x = np.abs(x.astype(np.float64)).sum(axis=tuple(range(2, 2 + n_in)))  # rows
  # rounding to the nearest step: |w - q scale| <= scale / 2 per weight, so per output
  # |err| <= sum_i |x_i| scale / 2; plus float32 accumulation of the int8 product
  bound = abs_x[(...,) + (None,) * (len(shape) - n_in)] * scale / 2
  dequantized = np.asarray(qw.q, np.float64) * np.asarray(qw.scale, np.float64)
  fp32_slop = 4 * 2.0**-24 * np.tensordot(np.abs(x.astype(np.float64)), np.abs(dequantized),
                                           n_in) * np.prod(shape[:n_in])
  assert np.all(np.abs(y - reference) <= bound + fp32_slop)
  # and it is the product with the dequantised weight, to float32 rounding
  exact = np.tensordot(x.astype(np.float64), dequantized, n_in)
  assert np.all(np.abs(y - exact) <= fp32_slop)
  assert np.all(np.abs(np.asarray(qw.q)) <= 127)


def test_a_zero_channel_stays_zero():
  w = jnp.zeros((8, 3)).at[:, 1].set(jnp.arange(8.0))
  qw = quant.quantize(w, (0,))
  assert np.all(np.asarray(qw.q)[:, [0, 2]] == 0) and np.all(np.isfinite(np.asarray(qw.scale)))
  assert np.asarray(qw.q)[7, 1] == 127


CASES = {
    "scanned": dict(scan_layers=True),
    "untied head, per layer": dict(scan_layers=False, tie_embeddings=False),
    "gqa swiglu rope": dict(num_kv_heads=2, mlp="swiglu", position="rope", norm="rmsnorm"),
    "moe with a shared expert": dict(num_experts=4, experts_per_token=2, moe_every=2,
                                     num_shared_experts=1, mlp="swiglu"),
    "lora adapters (moe)": dict(num_experts=4, experts_per_token=2, lora_rank=4,
                                lora_targets="attn,mlp"),
}


def _cfg(lora_rank=0, lora_targets="", **kw):
  cfg = config_lib.section("model", vocab_size=61, max_seq_len=32, num_layers=2, num_heads=4,
                           embed_dim=64, **kw)
  # lora_* come from the finetune section; B starts at zero, so give it values
  return dataclasses.replace(cfg, lora_rank=lora_rank, lora_alpha=8.0,
                             lora_targets=lora_targets)


@pytest.mark.parametrize("case", CASES)
def test_every_matrix_is_int8_and_the_logits_stay_close(case):
  cfg = _cfg(**CASES[case])
  graphdef, _, _ = state_lib.model_graph(cfg)
  params = state_lib.random_params(cfg, 0)
  params = jax.tree_util.tree_map_with_path(  # nonzero LoRA B: the adapters take part
      lambda path, x: x + 0.02 if "'b'" in jax.tree_util.keystr(path) else x, params)
  qparams = quant.quantize_params(params, cfg)
  is_q = lambda x: isinstance(x, quant.QWeight)
  floating = {jax.tree_util.keystr(k): v.shape for k, v in
              jax.tree_util.tree_leaves_with_path(qparams, is_leaf=is_q) if not is_q(v)}
  # what stays float: embeddings, norms, the router, LoRA adapters; every other matrix is int8
  for name, shape in floating.items():
    assert len(shape) - cfg.scan_layers <= 1 or any(
        k in name for k in ("token_embed", "position_embed", "router", "lora")), name
  if not cfg.lora_rank:  # (float adapters of rank 4 on every matrix add more)
    assert quant.weights_bytes(qparams) <= 0.35 * quant.weights_bytes(params)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 61, (2, 16)), jnp.int32)
  forward = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens)[0][..., :61])
  float_logits, int8_logits = forward(params), forward(qparams)
  # random weights give small logits: the error is a few percent of their spread
  assert float(jnp.abs(int8_logits - float_logits).max()) < 0.05 * float(float_logits.std())
  assert not np.array_equal(np.asarray(int8_logits), np.asarray(float_logits))


def test_storage_round_trip_and_abstract_shapes():
  cfg = _cfg(scan_layers=True, tie_embeddings=False)
  qparams = quant.quantize_params(state_lib.random_params(cfg, 0), cfg)
  again = quant.from_storage(quant.to_storage(qparams))
  assert jax.tree.structure(again) == jax.tree.structure(qparams)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again),
                                                   jax.tree.leaves(qparams)))
  abstract = quant.abstract(state_lib.model_graph(cfg)[1], cfg)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), qparams)


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="int4"):
    quant.check_mode("int4")
