"""int8 weight-only quantization: the decoder's matrices as int8 + per-output-channel scales.

A quantized weight is a `QWeight`: `q` (int8, the weight's shape) and `scale` (float32, the
weight's shape with its contracted axes kept at size 1), with w ~= q * scale and
scale = max |w| over the contracted axes / 127 (symmetric, one scale per output channel of
each layer and expert). The matrices quantized: attention q/k/v/out, MLP fc/proj (dense,
shared-expert and per-expert), and an untied lm head. Embeddings, norms, the router, the
shared-expert gate and LoRA adapters stay floating. A QWeight sits in the parameter tree
where the float weight was (the same nnx graph: `Projection` and the MoE weights check the
leaf's type), so every leaf in memory is the int8 array or its scales: resident weight
bytes are ~1/4 of float32's.

Dequantisation is inside the matmul: a projection computes (x . q) * scale, exact in the
algebra because the scale is per output channel, and the lm head likewise; no float copy of
a weight is kept (XLA may convert q into a temporary of one matmul). MoE expert weights are
dequantised whole before dispatch (the dispatch paths gather them per block), a temporary
per MoE layer and step.

Why not qwix (Google's JAX quantization library, 0.1.8, checked 2026-12-07 against this
model): its PTQ provider quantizes a weight when it intercepts `jax.lax.dot_general`,
`jnp.einsum` or `jnp.dot` called with an nnx.Param of the *module whose __call__ it wrapped*,
and stores the result by setattr on that module during one eager call. Here (1) projections
contract with `jnp.tensordot`, which it does not intercept; (2) blocks run through pure
split/merge functions inside jax.checkpoint / lax.scan / while_loop (model/gpt._block_fn),
so the modules it would write are fresh copies and nothing is stored back. Run on a tiny
Decoder, `qwix.quantize_model(model, qwix.PtqProvider([QuantizationRule(module_path='.*',
weight_qtype=int8)]), tokens)` quantized only the untied lm head (the one einsum in
Decoder.__call__) and left every block matrix float32; with scan_layers=True it failed
(a sharding assertion on the stacked qkv weight). Making it fit would mean rewriting the
layers around its interception; the int8 + scale format here is the one its QArray stores.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

MODES = ("int8",)
FILENAME = "quantization.json"  # in a run directory written by treadle-quantize
_ATTN_BASE = {"qkv": (4, 1), "q": (3, 1), "kv": (4, 1), "out": (3, 2)}  # (ndim, contracted)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QWeight:
  """int8 values and float32 scales of one weight (or of a stack of layers' weights)."""
  q: jax.Array
  scale: jax.Array

  @property
  def shape(self):
    return self.q.shape

  @property
  def ndim(self):
    return self.q.ndim

  def dequantize(self, dtype) -> jax.Array:
    return (self.q.astype(jnp.float32) * self.scale).astype(dtype)


def check_mode(mode: str | None) -> None:
  if mode is not None and mode not in MODES:
    raise ValueError(f"quantize={mode!r}: supported: {', '.join(MODES)}")


def quantize(w: jax.Array, contracted: tuple[int, ...]) -> QWeight:
  """Symmetric int8 with one scale per slice over the `contracted` axes (an all-zero
  channel gets scale 1, not 0: q stays 0 and nothing divides by zero)."""
  w = w.astype(jnp.float32)
  amax = jnp.max(jnp.abs(w), axis=contracted, keepdims=True)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
  return QWeight(q, scale)


def contract(x: jax.Array, w: jax.Array | QWeight, n_in: int, dtype) -> jax.Array:
  """tensordot(x, w, n_in) in `dtype`; a QWeight as (x . q) * scale, the scale applied to
  the output channels after the dot.

  XLA:CPU (jax 0.12) does not fuse the int8 -> float convert into the dot: it writes a float
  copy of q for each matmul, so on a CPU int8 saves memory, not time (experiments/bench,
  quant_bench.py). A one-row multiply-reduce instead (convert fused, q read once as int8)
  decoded 10x slower at batch 1 inside the decode loop on this CPU, so the dot stays."""
  if not isinstance(w, QWeight):
    return jnp.tensordot(x, w.astype(dtype), n_in)
  y = jnp.tensordot(x, w.q.astype(dtype), n_in)
  scale = w.scale.reshape(w.scale.shape[n_in:])  # the output dims (contracted ones are 1)
  return (y.astype(jnp.float32) * scale).astype(dtype)


def value(variable) -> jax.Array | QWeight:
  """An nnx.Param's value: an array or a QWeight (`param[...]` indexes into arrays only)."""
  v = variable.get_value()
  return v if isinstance(v, QWeight) else variable[...]


def _contracted(ndim: int, base_ndim: int, first: int, n_in: int) -> tuple[int, ...]:
  """Axes contracted by a weight whose own layout has `base_ndim` axes, contracted from
  `first`; extra leading axes (stacked layers) are batch axes that keep their own scales."""
  lead = ndim - base_ndim
  if lead < 0:
    raise ValueError(f"a weight of {ndim} dims where {base_ndim} were expected")
  return tuple(range(lead + first, lead + first + n_in))


def map_weights(params: dict, model_cfg, fn: Callable[[Any, tuple[int, ...]], Any]) -> dict:
  """`params` with every quantizable weight leaf x replaced by fn(x, contracted axes)."""
  swiglu = model_cfg.mlp == "swiglu"

  def mlp(node, experts: bool):
    out = dict(node)
    first = 1 if experts else 0  # expert weights are [E, in, out...]
    for name, base in (("fc", 3 if swiglu else 2), ("proj", 2)):
      w = node[name]["w"]
      out[name] = {**node[name], "w": fn(w, _contracted(w.ndim, base + first, first, 1))}
    if "shared" in node:
      out["shared"] = mlp(node["shared"], False)
    return out

  def block(node):
    node = dict(node)
    if "attn" in node:
      attn = dict(node["attn"])
      for name, (base, n_in) in _ATTN_BASE.items():
        if name in attn:
          w = attn[name]["w"]
          attn[name] = {**attn[name], "w": fn(w, _contracted(w.ndim, base, 0, n_in))}
      node["attn"] = attn
      node["mlp"] = mlp(node["mlp"], "router" in node["mlp"])
      return node
    return {k: block(v) for k, v in node.items()}  # a list of blocks, or a BlockGroup

  out = dict(params)
  out["blocks"] = block(params["blocks"])
  if params.get("lm_head") is not None:
    out["lm_head"] = fn(params["lm_head"], _contracted(params["lm_head"].ndim, 2, 0, 1))
  return out


def quantize_params(params: dict, model_cfg) -> dict:
  """The parameter tree with its matrices as QWeights (already quantized ones kept)."""
  def one(w, contracted):
    return w if isinstance(w, QWeight) else quantize(w, contracted)
  return map_weights(params, model_cfg, one)


def is_quantized(params) -> bool:
  return any(isinstance(x, QWeight) for x in
             jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, QWeight)))


def abstract(params: dict, model_cfg) -> dict:
  """ShapeDtypeStructs of the quantized tree from the float tree (arrays or
  ShapeDtypeStructs): q sharded as w, the scale as w but unsplit on the contracted axes
  (size 1 there)."""
  def one(a, contracted):
    scale_shape = tuple(1 if i in contracted else d for i, d in enumerate(a.shape))
    sharding = getattr(a, "sharding", None)
    scale_sharding = sharding  # a single-device or unplaced one fits any shape
    if isinstance(sharding, jax.sharding.NamedSharding):
      spec = tuple(sharding.spec) + (None,) * (a.ndim - len(sharding.spec))
      spec = tuple(None if i in contracted else p for i, p in enumerate(spec))
      scale_sharding = jax.sharding.NamedSharding(sharding.mesh,
                                                  jax.sharding.PartitionSpec(*spec))
    return QWeight(jax.ShapeDtypeStruct(a.shape, jnp.int8, sharding=sharding),
                   jax.ShapeDtypeStruct(scale_shape, jnp.float32, sharding=scale_sharding))
  return map_weights(params, model_cfg, one)


def quantize_placed(params: dict, model_cfg) -> dict:
  """`quantize_params` of placed arrays, compiled, each result placed as `abstract` says."""
  placement = jax.tree.map(lambda a: a.sharding, abstract(params, model_cfg))
  return jax.jit(lambda p: quantize_params(p, model_cfg), out_shardings=placement)(params)


def weights_bytes(params) -> int:
  """Resident bytes of the parameter leaves (int8 values and scales counted as stored)."""
  return int(sum(x.nbytes for x in jax.tree.leaves(params)))


def to_storage(params):
  """QWeights as {"q", "scale"} dicts: the tree Orbax saves and restores."""
  return jax.tree.map(lambda x: {"q": x.q, "scale": x.scale} if isinstance(x, QWeight) else x,
                      params, is_leaf=lambda x: isinstance(x, QWeight))


def from_storage(params):
  """The inverse of `to_storage`."""
  if isinstance(params, dict):
    if set(params) == {"q", "scale"}:
      return QWeight(params["q"], params["scale"])
    return {k: from_storage(v) for k, v in params.items()}
  return params


def cast_weights(params, dtype):
  """Floating weights in `dtype`, on the shardings they had (no work if they already are);
  the float32 scales of int8 weights stay float32."""
  is_q = lambda x: isinstance(x, QWeight)
  floating = lambda x: not is_q(x) and jnp.issubdtype(x.dtype, jnp.floating)
  if all(x.dtype == dtype for x in jax.tree.leaves(params, is_leaf=is_q) if floating(x)):
    return params
  cast = lambda p: jax.tree.map(lambda x: x.astype(dtype) if floating(x) else x, p,
                                is_leaf=is_q)
  return jax.jit(cast, out_shardings=jax.tree.map(lambda x: x.sharding, params))(params)


def for_inference(params, model_cfg, quantize: str | None, dtype) -> dict:
  """Weights as a decoder samples with them: quantized if `quantize` says so and they are not
  already (from the float weights, before any cast), then floats cast to `dtype` (None: as
  they are)."""
  if quantize and not is_quantized(params):
    params = quantize_placed(params, model_cfg)
  return params if dtype is None else cast_weights(params, dtype)
