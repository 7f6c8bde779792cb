"""Decoder-only language model in Flax NNX: GPT-2 style by default, Llama style by config.

Options (all in ModelConfig): learned or rotary positions, LayerNorm or RMSNorm, GELU or
SwiGLU MLP, grouped-query attention, biases, tied or untied output layer, QK-norm, final
logit soft-cap, layers stacked and scanned, rematerialisation, LoRA adapters, mixture-of-
experts feed-forward blocks (model/moe.py).
"""
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from treadle.configs import base
from treadle.model import axes
from treadle.model import layers
from treadle.model import moe
from treadle.model import quant
from treadle.model.layers import DecodeState, LayerCache  # noqa: F401  (the cache types, re-exported)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots,
                   "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
# LoRA targets: weight names, or groups of them
LORA_GROUPS = {"attn": ("qkv", "q", "kv", "out"), "mlp": ("fc", "proj")}
LORA_WEIGHTS = LORA_GROUPS["attn"] + LORA_GROUPS["mlp"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """model.* of a language model: keys, base values and meanings in configs/base.py.

  vocab_size and max_seq_len of 0 are filled from the data by the task; lora_* are not
  model-section keys: train/config.split() fills them from the finetune section.
  """
  vocab_size: int
  max_seq_len: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  embed_dim: int
  mlp_ratio: int
  mlp_hidden_dim: int
  mlp: str
  norm: str
  position: str
  rope_base: float
  rope_scaling: str
  rope_scaling_factor: float
  rope_low_freq_factor: float
  rope_high_freq_factor: float
  rope_original_max_len: int
  attn_head_dim: int
  norm_eps: float
  qkv_bias: bool
  qk_norm: bool
  logit_softcap: float
  tie_embeddings: bool
  dropout: float
  use_bias: bool
  compute_dtype: str
  vocab_multiple: int
  scan_layers: bool
  remat: str
  parametrization: str
  mup_base_width: int
  num_experts: int
  experts_per_token: int
  moe_every: int
  moe_hidden_dim: int
  num_shared_experts: int
  shared_expert_gate: bool
  router_norm_topk: bool
  capacity_factor: float
  router_aux_loss_coef: float
  router_z_loss_coef: float
  lora_rank: int
  lora_alpha: float
  lora_targets: str

  def __post_init__(self):
    # each key's own type, range or choices are declared in configs/base.py; here only the
    # rules that tie keys together
    base.check_fields("model", "lm", self)
    if not self.attn_head_dim and self.embed_dim % self.num_heads:
      raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} is not divisible by "
                       f"model.num_kv_heads={self.num_kv_heads}")
    if self.position == "rope" and self.head_dim % 2:
      raise ValueError(f"model.position=rope needs an even head dim (embed_dim/num_heads="
                       f"{self.head_dim})")
    if self.rope_scaling == "llama3" and not (
        self.rope_scaling_factor > 0 and self.rope_original_max_len > 0
        and 0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
      raise ValueError("model.rope_scaling=llama3 needs rope_scaling_factor > 0, "
                       "rope_original_max_len > 0 and 0 < rope_low_freq_factor < "
                       "rope_high_freq_factor")
    if self.parametrization == "mup" and not self.attn_head_dim and (
        self.mup_base_width % self.num_heads):
      raise ValueError(f"model.mup_base_width={self.mup_base_width} is not divisible by "
                       f"model.num_heads={self.num_heads} (the base width's head dim)")
    self._check_moe()
    self._check_lora()

  def _check_moe(self):
    if not self.num_experts:
      return
    if self.num_experts < 2:
      raise ValueError(f"model.num_experts={self.num_experts}: use 0 (dense) or at least 2")
    if self.use_bias:
      raise ValueError("model.use_bias with model.num_experts: MoE experts have no biases "
                       "(use qkv_bias for attention biases)")
    if self.experts_per_token > self.num_experts:
      raise ValueError(f"model.experts_per_token={self.experts_per_token} is more than "
                       f"model.num_experts={self.num_experts}")
    if self.moe_every > self.num_layers:
      raise ValueError(f"model.moe_every={self.moe_every} leaves no MoE block in "
                       f"model.num_layers={self.num_layers}")
    if self.scan_layers and self.num_layers % self.moe_every:
      raise ValueError(f"model.scan_layers with model.moe_every={self.moe_every} needs "
                       f"num_layers divisible by it (got {self.num_layers})")

  def _check_lora(self):
    if not self.lora_rank:
      return
    unknown = [t for t in self._lora_names() if t not in LORA_WEIGHTS and t not in LORA_GROUPS]
    if unknown or not self._lora_names():
      raise ValueError(f"finetune.lora_targets={self.lora_targets!r}: use a comma-separated "
                       f"list of {sorted(LORA_GROUPS)} or weights {list(LORA_WEIGHTS)}")
    fused = self.kv_heads == self.num_heads
    absent = [t for t in self._lora_names() if t in (("q", "kv") if fused else ("qkv",))]
    if absent:
      raise ValueError(f"finetune.lora_targets: {absent} not in this model (attention is "
                       f"{'fused qkv' if fused else 'split q/kv'}; use 'attn' for all of it)")

  def _lora_names(self) -> list[str]:
    return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

  @property
  def lora_weights(self) -> tuple[str, ...]:
    """Names of the weights that carry a LoRA adapter (empty without LoRA)."""
    if not self.lora_rank:
      return ()
    names = []
    for t in self._lora_names():
      names.extend(LORA_GROUPS.get(t, (t,)))
    return tuple(names)

  def make(self, rngs: nnx.Rngs) -> "Decoder":
    return Decoder(self, rngs)

  @property
  def head_dim(self) -> int:
    return self.attn_head_dim or self.embed_dim // self.num_heads

  @property
  def norm_epsilon(self) -> float:
    return self.norm_eps or (1e-6 if self.norm == "rmsnorm" else 1e-5)

  @property
  def width_mult(self) -> float:
    """mup's m = embed_dim / mup_base_width; 1 under sp (and at the base width)."""
    return self.embed_dim / self.mup_base_width if self.parametrization == "mup" else 1.0

  @property
  def hidden_init_scale(self) -> float:
    """Hidden matrices' init std multiplier: 1 / sqrt(m) (variance / m) under mup."""
    return 1.0 / math.sqrt(self.width_mult)

  @property
  def attention_scale_mult(self) -> float:
    """Attention scores are q.k / sqrt(d_head) x this: sqrt(d_base / d_head) under mup, where
    d_base is the head dim at the base width, so q.k x sqrt(d_base) / d_head (1 at the base)."""
    if self.parametrization != "mup":
      return 1.0
    base_head_dim = self.attn_head_dim or self.mup_base_width // self.num_heads
    return math.sqrt(base_head_dim / self.head_dim)

  @property
  def expert_hidden_dim(self) -> int:
    return self.moe_hidden_dim or self.hidden_dim

  def is_moe_block(self, index: int) -> bool:
    """Blocks moe_every - 1, 2 moe_every - 1, ... are MoE (Qwen2-MoE's decoder_sparse_step)."""
    return bool(self.num_experts) and (index + 1) % self.moe_every == 0

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def hidden_dim(self) -> int:
    return self.mlp_hidden_dim or self.mlp_ratio * self.embed_dim

  @property
  def padded_vocab_size(self) -> int:
    """Rounded up so the vocab axis can be split over devices; padded logits are masked."""
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def dtype(self):
    return _DTYPES[self.compute_dtype]


def _block_fn(cfg: ModelConfig, graphdef: nnx.GraphDef, positions_BT, decode,
              segment_ids_BT=None):
  """A pure function (block state, x, cache, key) -> (x, cache, router stats),
  rematerialised per config.

  Pure (split/merge) rather than nnx.scan/nnx.remat: decoding runs the model inside
  lax.while_loop/cond, where NNX transforms refuse modules created outside the loop.
  """
  def apply(state, x, layer_cache, key):
    return nnx.merge(graphdef, state)(x, positions_BT, layer_cache, decode, key, segment_ids_BT)
  if cfg.remat == "none":
    return apply
  return jax.checkpoint(apply, policy=_REMAT_POLICIES[cfg.remat])


def _block(cfg: ModelConfig, index: int, rngs: nnx.Rngs) -> layers.Block:
  return layers.Block(cfg, rngs, moe_mlp=moe.MoeMlp(cfg, rngs) if cfg.is_moe_block(index)
                      else None)


class BlockGroup(nnx.Module):
  """moe_every consecutive blocks (the last one MoE): the unit scanned when MoE blocks are
  interleaved with dense ones. Its cache has a leading axis of its blocks."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.blocks = nnx.List([_block(cfg, i, rngs) for i in range(cfg.moe_every)])

  def __call__(self, x_BTD, positions_BT, cache, decode, key, segment_ids_BT):
    keys = layers.split_keys(key, len(self.blocks))
    caches, stats = [], None
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else jax.tree.map(lambda c: c[i], cache)
      x_BTD, layer_cache, block_stats = block(x_BTD, positions_BT, layer_cache, decode,
                                              keys[i], segment_ids_BT)
      caches.append(layer_cache)
      stats = block_stats if block_stats is not None else stats
    new_cache = None if cache is None else jax.tree.map(lambda *c: jnp.stack(c), *caches)
    return x_BTD, new_cache, stats


def _scan_unit(cfg: ModelConfig) -> int:
  """Blocks per scanned step: 1, or moe_every when MoE blocks alternate with dense ones."""
  return cfg.moe_every if cfg.num_experts and cfg.moe_every > 1 else 1


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """The blocks as one module whose parameters have a leading `layers` axis (of blocks, or of
  BlockGroups when MoE blocks alternate with dense ones)."""
  unit = _scan_unit(cfg)

  @nnx.split_rngs(splits=cfg.num_layers // unit)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
  def make(rngs):
    return BlockGroup(cfg, rngs) if unit > 1 else _block(cfg, 0, rngs)
  return make(rngs)


def _run_blocks(cfg: ModelConfig, blocks, x_BTD, positions_BT, cache, decode, key,
                segment_ids_BT=None):
  """Applies an nnx.List of blocks one by one; `cache` is a list of LayerCache."""
  keys = layers.split_keys(key, len(blocks))
  new_cache, stats = [], []
  for i, block in enumerate(blocks):
    graphdef, state = nnx.split(block)
    x_BTD, layer_cache, block_stats = _block_fn(
        cfg, graphdef, positions_BT, decode, segment_ids_BT)(
            state, x_BTD, None if cache is None else cache[i], keys[i])
    new_cache.append(layer_cache)
    if block_stats is not None:
      stats.append(block_stats)
  stacked = jax.tree.map(lambda *s: jnp.stack(s), *stats) if stats else None
  return x_BTD, (None if cache is None else new_cache), stacked


def _scan_blocks(cfg: ModelConfig, blocks, x_BTD, positions_BT, cache, decode, key,
                 segment_ids_BT=None):
  """Scans the stacked blocks; `cache` is one LayerCache with a leading layers axis."""
  graphdef, state = nnx.split(blocks)
  unit = _scan_unit(cfg)
  steps = cfg.num_layers // unit
  keys = None if key is None else jax.random.split(key, steps)
  if cache is not None and unit > 1:
    cache = jax.tree.map(lambda c: c.reshape(steps, unit, *c.shape[1:]), cache)
  fn = _block_fn(cfg, graphdef, positions_BT, decode, segment_ids_BT)

  def body(x, xs):
    layer_state, layer_cache, layer_key = xs
    x, layer_cache, stats = fn(layer_state, x, layer_cache, layer_key)
    return x, (layer_cache, stats)

  x_BTD, (cache, stats) = jax.lax.scan(body, x_BTD, (state, cache, keys))
  if cache is not None and unit > 1:
    cache = jax.tree.map(lambda c: c.reshape(cfg.num_layers, *c.shape[2:]), cache)
  return x_BTD, cache, stats


class Decoder(nnx.Module):
  """Token ids -> next-token logits; optionally reads and writes a KV cache."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    V, D = cfg.padded_vocab_size, cfg.embed_dim
    self.token_embed = axes.param(nnx.initializers.normal(0.02), rngs.params(), (V, D),
                                  (axes.VOCAB, axes.EMBED))
    self.position_embed = (axes.param(nnx.initializers.normal(0.02), rngs.params(),
                                      (cfg.max_seq_len, D), (None, axes.EMBED))
                           if cfg.position == "learned" else None)
    self.blocks = (_stacked_blocks(cfg, rngs) if cfg.scan_layers
                   else nnx.List([_block(cfg, i, rngs) for i in range(cfg.num_layers)]))
    self.ln_f = layers.norm(cfg, D)
    self.lm_head = (None if cfg.tie_embeddings else
                    axes.param(nnx.initializers.normal(0.02), rngs.params(), (D, V),
                               (axes.EMBED, axes.VOCAB)))

  def __call__(self, tokens_BT: jax.Array, *, positions_BT: jax.Array | None = None,
               cache: Any = None, decode: DecodeState | None = None,
               dropout_key: jax.Array | None = None, segment_ids_BT: jax.Array | None = None):
    """Returns fp32 logits [B, T, padded V] (padding masked to -inf) and the updated cache.

    segment_ids_BT (packed training windows): tokens attend only within their segment.
    """
    logits_BTV, cache, _ = self.forward(tokens_BT, positions_BT=positions_BT, cache=cache,
                                        decode=decode, dropout_key=dropout_key,
                                        segment_ids_BT=segment_ids_BT)
    return logits_BTV, cache

  def forward(self, tokens_BT: jax.Array, *, positions_BT: jax.Array | None = None,
              cache: Any = None, decode: DecodeState | None = None,
              dropout_key: jax.Array | None = None, segment_ids_BT: jax.Array | None = None):
    """(logits, cache, router statistics of the MoE blocks stacked on a leading axis, or
    None for a dense model): `moe.router_losses` and `moe.metrics` read them."""
    cfg = self.cfg
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    x_BTD = self.token_embed[...][tokens_BT]
    if self.position_embed is not None:
      x_BTD = x_BTD + self.position_embed[...][positions_BT]
    embed_key, blocks_key = layers.split_keys(dropout_key, 2)
    x_BTD = layers.dropout(x_BTD, cfg.dropout, embed_key).astype(cfg.dtype)
    x_BTD = axes.constrain(x_BTD, (axes.BATCH, None, axes.EMBED))
    run = _scan_blocks if cfg.scan_layers else _run_blocks
    x_BTD, cache, stats = run(cfg, self.blocks, x_BTD, positions_BT, cache, decode, blocks_key,
                              segment_ids_BT)
    return self._logits(self.ln_f(x_BTD)), cache, stats

  def _logits(self, x_BTD: jax.Array) -> jax.Array:
    cfg = self.cfg
    if self.lm_head is None:
      logits_BTV = jnp.einsum("btd,vd->btv", x_BTD, self.token_embed[...].astype(cfg.dtype),
                              preferred_element_type=jnp.float32)
    else:
      head = quant.value(self.lm_head)
      if isinstance(head, quant.QWeight):  # int8 [D, V] with scales [1, V]: (x . q) * scale
        logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, head.q.astype(cfg.dtype),
                                preferred_element_type=jnp.float32) * head.scale[0]
      else:
        logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, head.astype(cfg.dtype),
                                preferred_element_type=jnp.float32)
    if cfg.parametrization == "mup":  # mup's readout: logits / m
      logits_BTV = logits_BTV * (1.0 / cfg.width_mult)
    if cfg.logit_softcap:
      logits_BTV = cfg.logit_softcap * jnp.tanh(logits_BTV / cfg.logit_softcap)
    if cfg.padded_vocab_size != cfg.vocab_size:
      real_V = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
      logits_BTV = jnp.where(real_V, logits_BTV, -jnp.inf)
    return logits_BTV

  def init_cache(self, batch_size: int, cache_len: int) -> Any:
    """Zeroed KV cache: a list of per-layer LayerCache, or one stacked LayerCache if scanned."""
    cfg = self.cfg
    shape = (batch_size, cfg.kv_heads, cfg.head_dim, cache_len)
    if cfg.scan_layers:
      shape = (cfg.num_layers, *shape)
      return LayerCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
    return [LayerCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
            for _ in range(cfg.num_layers)]


def cache_len(cache: Any) -> int:
  """Number of slots of a cache made by Decoder.init_cache."""
  first = cache if isinstance(cache, LayerCache) else cache[0]
  return first.k_BGKS.shape[-1]


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array,
                  mask_BT: jax.Array | None = None) -> jax.Array:
  """Mean next-token cross entropy in fp32, over the tokens where mask_BT is 1 if given."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  nll_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
  if mask_BT is None:
    return nll_BT.mean()
  return (nll_BT * mask_BT).sum() / jnp.maximum(mask_BT.sum(), 1.0)
