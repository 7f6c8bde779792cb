"""Decoder building blocks: norms, rotary positions, attention (MHA/GQA), MLPs, LoRA adapters.

Every option here is chosen by gpt.ModelConfig; modules read only the fields they need.
Weights are float32 parameters annotated with logical axes; they are cast to the compute
dtype at use. A projection contracts the leading `n_in` dims of its weight with the
trailing dims of the activation (`jnp.tensordot`), so one helper serves every weight
layout, and a LoRA adapter of the same weight does the same contraction through rank r.
"""
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from treadle.model import axes
from treadle.model import quant


class LayerCache(NamedTuple):
  """Keys and values of one layer (or of all layers, stacked, when layers are scanned)."""
  k_BGKS: jax.Array  # [B, kv heads, head dim, slots]: slots minor; with [B, G, S, K]
                     # XLA:CPU transposed the whole cache for every decoded token
  v_BGKS: jax.Array


class DecodeState(NamedTuple):
  """Where new tokens go in the cache and which cache slots hold real tokens."""
  write_index: jax.Array  # scalar int32: slot of the first new token
  valid_BS: jax.Array     # bool: slot holds a real (non-padding) token


def _hash32(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser: a bijection that scatters counters into uniform bits."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout with a counter-based mask: hash(element index, seed drawn from key).

  jax.random.bernoulli (threefry per element) cost 6-8 s of a ~25 s step of the 6-layer
  384-wide model on this CPU; a few integer ops per element fuse into the surrounding
  elementwise work. The mask depends only on the key and each element's global index, so
  it is the same however the array is sharded.
  """
  if key is None or rate == 0.0:
    return x
  seed = jax.random.bits(key, (), jnp.uint32)
  index = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(x.ndim)):  # row-major flat index, built from per-axis iotas
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride)
    stride *= x.shape[axis]
  bits = _hash32(_hash32(index ^ seed) + seed)
  keep = bits >= jnp.uint32(min(int(rate * 2.0**32), 2**32 - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def split_keys(key: jax.Array | None, n: int) -> list[jax.Array | None]:
  return [None] * n if key is None else list(jax.random.split(key, n))


class LoraAdapter(nnx.Module):
  """Low-rank update W + (alpha / r) A B of one weight; B starts at zero (no change at init)."""

  def __init__(self, shape, names, n_in: int, rank: int, alpha: float, rngs: nnx.Rngs):
    in_shape, out_shape = tuple(shape[:n_in]), tuple(shape[n_in:])
    fan_in = math.prod(in_shape)
    self.scale = alpha / rank
    self.a = axes.param(nnx.initializers.normal(1.0 / math.sqrt(fan_in)), rngs.params(),
                        (*in_shape, rank), (*names[:n_in], None))
    self.b = axes.param(nnx.initializers.zeros, rngs.params(), (rank, *out_shape),
                        (None, *names[n_in:]))

  def __call__(self, x: jax.Array, n_in: int, dtype) -> jax.Array:
    low = jnp.tensordot(x, self.a[...].astype(dtype), n_in)
    return jnp.tensordot(low, self.b[...].astype(dtype), 1) * jnp.asarray(self.scale, dtype)


class Projection(nnx.Module):
  """A weight (optionally with bias and a LoRA adapter) contracting its first n_in dims."""

  def __init__(self, cfg, name: str, shape, names, n_in: int, std: float, rngs: nnx.Rngs):
    self.n_in = n_in
    self.dtype = cfg.dtype
    # every Projection is a hidden matrix: under mup its init variance is divided by m
    self.w = axes.param(nnx.initializers.normal(std * cfg.hidden_init_scale), rngs.params(),
                        shape, names)
    has_bias = cfg.use_bias or (cfg.qkv_bias and name in ("qkv", "q", "kv"))
    self.bias = (axes.param(nnx.initializers.zeros, rngs.params(), shape[n_in:], names[n_in:])
                 if has_bias else None)
    self.lora = (LoraAdapter(shape, names, n_in, cfg.lora_rank, cfg.lora_alpha, rngs)
                 if name in cfg.lora_weights else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    # an int8 QWeight (model/quant.py) is dequantised inside the matmul: (x . q) * scale
    y = quant.contract(x, quant.value(self.w), self.n_in, self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora is not None:
      y = y + self.lora(x, self.n_in, self.dtype)
    return y


class LayerNorm(nnx.Module):
  def __init__(self, dim: int, use_bias: bool, name: str = axes.EMBED, eps: float = 1e-5):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=(name,),
                           eager_sharding=False)
    self.bias = (nnx.Param(jnp.zeros((dim,), jnp.float32), out_sharding=(name,),
                           eager_sharding=False) if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    # statistics in fp32: bf16 variance loses too many bits
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(x.dtype)


class RMSNorm(nnx.Module):
  """Scale-only norm by the root mean square (no centring, no bias)."""

  def __init__(self, dim: int, name: str = axes.EMBED, eps: float = 1e-6):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=(name,),
                           eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps) * self.scale[...]
    return y.astype(x.dtype)


def norm(cfg, dim: int, name: str = axes.EMBED) -> LayerNorm | RMSNorm:
  if cfg.norm == "rmsnorm":
    return RMSNorm(dim, name, cfg.norm_epsilon)
  return LayerNorm(dim, cfg.use_bias, name, cfg.norm_epsilon)


def rope_frequencies(cfg) -> np.ndarray:
  """Rotary angular frequencies [head_dim / 2] in fp32, computed as Hugging Face does
  (1 / base^(2i/K)), so imported models turn by the same angles to the last bit."""
  K = cfg.head_dim
  exponent = np.arange(0, K, 2, dtype=np.float32) / np.float32(K)
  inv_freq = (np.float32(1.0) / np.power(np.float32(cfg.rope_base), exponent)).astype(np.float32)
  if cfg.rope_scaling == "llama3":
    inv_freq = _llama3_scaled(inv_freq, cfg)
  return inv_freq


def _llama3_scaled(inv_freq: np.ndarray, cfg) -> np.ndarray:
  """Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between."""
  factor, old_len = np.float32(cfg.rope_scaling_factor), np.float32(cfg.rope_original_max_len)
  low, high = np.float32(cfg.rope_low_freq_factor), np.float32(cfg.rope_high_freq_factor)
  wavelen = np.float32(2 * math.pi) / inv_freq
  scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope(x_BTNK: jax.Array, positions_BT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotary embedding (rotate-half form): pairs (i, i + K/2) turn by position * inv_freq[i]."""
  angle_BTF = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  cos, sin = jnp.cos(angle_BTF)[:, :, None], jnp.sin(angle_BTF)[:, :, None]
  x1, x2 = jnp.split(x_BTNK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNK.dtype)


class Attention(nnx.Module):
  """Multi-head or grouped-query attention (num_kv_heads), optional RoPE and QK-norm."""

  def __init__(self, cfg, rngs: nnx.Rngs, causal: bool = True):
    D, H, G, K = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim
    self.cfg = cfg
    self.causal = causal
    if G == H:  # one fused projection: one matmul instead of three
      self.qkv = Projection(cfg, "qkv", (D, 3, H, K),
                            (axes.EMBED, None, axes.HEADS, axes.HEAD_DIM), 1, 0.02, rngs)
    else:
      self.q = Projection(cfg, "q", (D, H, K), (axes.EMBED, axes.HEADS, axes.HEAD_DIM), 1,
                          0.02, rngs)
      self.kv = Projection(cfg, "kv", (D, 2, G, K),
                           (axes.EMBED, None, axes.KV_HEADS, axes.HEAD_DIM), 1, 0.02, rngs)
    # residual projections scaled down with depth (GPT-2)
    self.out = Projection(cfg, "out", (H, K, D), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), 2,
                          0.02 / math.sqrt(2 * cfg.num_layers), rngs)
    self.q_norm = RMSNorm(K, axes.HEAD_DIM) if cfg.qk_norm else None
    self.k_norm = RMSNorm(K, axes.HEAD_DIM) if cfg.qk_norm else None

  def _project(self, x_BTD):
    if self.cfg.kv_heads == self.cfg.num_heads:
      qkv = self.qkv(x_BTD)  # [B, T, 3, H, K]: the weight's own axis order, no transpose
      return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    kv = self.kv(x_BTD)
    return self.q(x_BTD), kv[:, :, 0], kv[:, :, 1]

  def __call__(self, x_BTD, positions_BT, cache: LayerCache | None,
               decode: DecodeState | None, key, segment_ids_BT=None):
    cfg = self.cfg
    q_BTHK, k_BTGK, v_BTGK = self._project(x_BTD)
    if self.q_norm is not None:
      q_BTHK, k_BTGK = self.q_norm(q_BTHK), self.k_norm(k_BTGK)
    if cfg.position == "rope":
      inv_freq = rope_frequencies(cfg)
      q_BTHK = rope(q_BTHK, positions_BT, inv_freq)
      k_BTGK = rope(k_BTGK, positions_BT, inv_freq)
    q_BTHK = axes.constrain(q_BTHK, (axes.BATCH, None, axes.HEADS, None))
    B, T, H, K = q_BTHK.shape
    G = k_BTGK.shape[2]
    q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)  # query heads grouped by their kv head
    if cache is None:
      full = jnp.ones((T, T), bool)
      mask_BTS = (jnp.tril(full) if self.causal else full)[None]
      if segment_ids_BT is not None:  # packed documents never attend to each other
        mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
      probs = self._probs(self._scores(q_BTGRK, k_BTGK, "bsgk"), mask_BTS, key)
      y_BTGRK = jnp.einsum("bgtrs,bsgk->btgrk", probs, v_BTGK.astype(cfg.dtype))
    else:
      y_BTGRK = self._attend_cached(q_BTGRK, k_BTGK, v_BTGK, cache, decode, key)
      # A zero that depends on the output: every read of the old cache comes before the
      # write, so XLA updates the cache in place rather than copying it every token.
      y0 = y_BTGRK.reshape(-1)[0]
      after = jnp.where(jnp.isfinite(y0), y0 * 0, 0).astype(k_BTGK.dtype)
      cache = _write_cache(cache, decode.write_index, k_BTGK + after, v_BTGK + after)
    return self.out(y_BTGRK.reshape(B, T, H, K)), cache

  def _scores(self, q_BTGRK, keys, kv: str):
    # scores and softmax in fp32: bf16 exp overflows and loses probability mass
    scores = jnp.einsum(f"btgrk,{kv}->bgtrs", q_BTGRK, keys.astype(self.cfg.dtype),
                        preferred_element_type=jnp.float32) / math.sqrt(q_BTGRK.shape[-1])
    if self.cfg.attention_scale_mult != 1.0:  # mup away from its base width
      scores = scores * self.cfg.attention_scale_mult
    return scores

  def _probs(self, scores, mask_BTS, key):
    scores = jnp.where(mask_BTS[:, None, :, None], scores, jnp.finfo(jnp.float32).min)
    return dropout(jax.nn.softmax(scores, axis=-1), self.cfg.dropout, key).astype(self.cfg.dtype)

  def _attend_cached(self, q_BTGRK, k_BTGK, v_BTGK, cache: LayerCache, decode: DecodeState,
                     key):
    """The new tokens attend to the cached slots before decode.write_index and, causally,
    to each other. Reading the cache as it was before this step's write: from the updated
    cache, XLA:CPU fused the update into the dots' operand as well as the loop state and
    copied the whole cache every token."""
    S, T = cache.k_BGKS.shape[-1], q_BTGRK.shape[1]
    start = decode.write_index
    old_BTS = jnp.broadcast_to((jnp.arange(S) < start)[None, None, :] & decode.valid_BS[:, None],
                               (decode.valid_BS.shape[0], T, S))
    new_valid_BT = jax.lax.dynamic_slice_in_dim(decode.valid_BS, start, T, axis=1)
    new_BTT = jnp.tril(jnp.ones((T, T), bool))[None] & new_valid_BT[:, None, :]
    scores = jnp.concatenate([self._scores(q_BTGRK, cache.k_BGKS, "bgks"),
                              self._scores(q_BTGRK, k_BTGK, "bsgk")], axis=-1)
    probs = self._probs(scores, jnp.concatenate([old_BTS, new_BTT], axis=-1), key)
    dtype = self.cfg.dtype
    return (jnp.einsum("bgtrs,bgks->btgrk", probs[..., :S], cache.v_BGKS.astype(dtype))
            + jnp.einsum("bgtrs,bsgk->btgrk", probs[..., S:], v_BTGK.astype(dtype)))


def _write_cache(cache: LayerCache, start, k_BTGK, v_BTGK) -> LayerCache:
  """Writes new keys/values at slots start.. (slots are the minor axis)."""
  new_k = k_BTGK.transpose(0, 2, 3, 1).astype(cache.k_BGKS.dtype)
  new_v = v_BTGK.transpose(0, 2, 3, 1).astype(cache.v_BGKS.dtype)
  return LayerCache(jax.lax.dynamic_update_slice_in_dim(cache.k_BGKS, new_k, start, axis=3),
                    jax.lax.dynamic_update_slice_in_dim(cache.v_BGKS, new_v, start, axis=3))


class Mlp(nnx.Module):
  """GELU (tanh form, GPT-2's) or SwiGLU (gate and up fused in one [D, 2, F] weight)."""

  def __init__(self, cfg, rngs: nnx.Rngs, hidden: int = 0):
    D, F = cfg.embed_dim, hidden or cfg.hidden_dim
    self.kind = cfg.mlp
    if cfg.mlp == "swiglu":
      self.fc = Projection(cfg, "fc", (D, 2, F), (axes.EMBED, None, axes.MLP), 1, 0.02, rngs)
    else:
      self.fc = Projection(cfg, "fc", (D, F), (axes.EMBED, axes.MLP), 1, 0.02, rngs)
    self.proj = Projection(cfg, "proj", (F, D), (axes.MLP, axes.EMBED), 1,
                           0.02 / math.sqrt(2 * cfg.num_layers), rngs)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    h = self.fc(x_BTD)
    if self.kind == "swiglu":
      h_BTF = jax.nn.silu(h[:, :, 0]) * h[:, :, 1]
    else:
      # tanh-approximate GELU: the erf form nanoGPT uses cost 28% of a CPU-recipe step
      # here (59.5 vs 46.5 ms) with the same val loss at step 1000 (2.0436 both)
      h_BTF = jax.nn.gelu(h, approximate=True)
    return self.proj(axes.constrain(h_BTF, (axes.BATCH, None, axes.MLP)))


class Block(nnx.Module):
  """Pre-norm transformer block. Its feed-forward is an Mlp, or `moe_mlp` (a mixture of
  experts, model/moe.py, built by the caller) returning (output, router statistics)."""

  def __init__(self, cfg, rngs: nnx.Rngs, causal: bool = True, moe_mlp: nnx.Module | None = None):
    self.dropout_rate = cfg.dropout
    self.ln1 = norm(cfg, cfg.embed_dim)
    self.attn = Attention(cfg, rngs, causal)
    self.ln2 = norm(cfg, cfg.embed_dim)
    self.moe = moe_mlp is not None
    self.mlp = moe_mlp if self.moe else Mlp(cfg, rngs)

  def __call__(self, x_BTD, positions_BT=None, cache=None, decode=None, key=None,
               segment_ids_BT=None) -> tuple[jax.Array, Any, dict | None]:
    """(output, updated cache, router statistics of an MoE block or None)."""
    k_attn, k_res1, k_res2 = split_keys(key, 3)
    y_BTD, cache = self.attn(self.ln1(x_BTD), positions_BT, cache, decode, k_attn,
                             segment_ids_BT)
    x_BTD = x_BTD + dropout(y_BTD, self.dropout_rate, k_res1)
    stats = None
    if self.moe:
      y_BTD, stats = self.mlp(self.ln2(x_BTD), dropless=cache is not None)
    else:
      y_BTD = self.mlp(self.ln2(x_BTD))
    x_BTD = x_BTD + dropout(y_BTD, self.dropout_rate, k_res2)
    return axes.constrain(x_BTD, (axes.BATCH, None, axes.EMBED)), cache, stats
