"""Image classifiers (a small CNN and a small ViT) in Flax NNX, with logical axes."""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from treadle.configs import base
from treadle.model import axes
from treadle.model import gpt
from treadle.model import layers


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """model.* of an image classifier: keys, base values and meanings in configs/base.py.

  num_classes, image_height and image_width of 0 are filled from the data by the task.
  """
  kind: str
  width: int
  embed_dim: int
  num_layers: int
  num_heads: int
  patch_size: int
  dropout: float
  num_classes: int
  image_height: int
  image_width: int

  def __post_init__(self):
    base.check_fields("model", "classify", self)  # each key's own range: configs/base.py
    if self.embed_dim % self.num_heads:
      raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    if self.kind == "vit" and self.image_height and (self.image_height % self.patch_size or
                                                     self.image_width % self.patch_size):
      raise ValueError(f"model.patch_size={self.patch_size} does not divide the "
                       f"{self.image_height}x{self.image_width} images")

  def make(self, rngs: nnx.Rngs) -> nnx.Module:
    return Cnn(self, rngs) if self.kind == "cnn" else Vit(self, rngs)


def _dense(rngs, fan_in: int, shape, names):
  return axes.param(nnx.initializers.normal(1.0 / math.sqrt(fan_in)), rngs.params(), shape, names)


class Cnn(nnx.Module):
  """conv-conv-pool-conv-conv, global average pool, linear head (ReLU, no norm)."""

  def __init__(self, cfg: ClassifierConfig, rngs: nnx.Rngs):
    c1, c2 = cfg.width, 2 * cfg.width
    self.dropout = cfg.dropout
    shapes = [(1, c1), (c1, c1), (c1, c2), (c2, c2)]
    self.kernels = nnx.List([_dense(rngs, 9 * i, (3, 3, i, o), (None, None, None, axes.MLP))
                             for i, o in shapes])
    self.biases = nnx.List([axes.param(nnx.initializers.zeros, rngs.params(), (o,), (axes.MLP,))
                            for _, o in shapes])
    self.head = _dense(rngs, c2, (c2, cfg.num_classes), (axes.MLP, None))
    self.head_bias = axes.param(nnx.initializers.zeros, rngs.params(), (cfg.num_classes,), (None,))

  def __call__(self, images_BHW: jax.Array, dropout_key=None) -> jax.Array:
    x = images_BHW[..., None]
    for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
      x = jax.lax.conv_general_dilated(x, kernel[...], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = axes.constrain(jax.nn.relu(x + bias[...]), (axes.BATCH, None, None, axes.MLP))
      if i == 1:  # 8x8 -> 4x4
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = layers.dropout(x.mean(axis=(1, 2)), self.dropout, dropout_key)
    return x @ self.head[...] + self.head_bias[...]


def _vit_block_config(cfg: ClassifierConfig, num_patches: int) -> gpt.ModelConfig:
  """The ViT's encoder block, spelt out: a pre-norm GPT-2 block (LayerNorm, GELU MLP 4x
  wide, multi-head attention, no biases; positions are added outside the blocks), run
  without a causal mask."""
  return gpt.ModelConfig(
      vocab_size=1, max_seq_len=num_patches, num_layers=cfg.num_layers,
      num_heads=cfg.num_heads, num_kv_heads=0, embed_dim=cfg.embed_dim, mlp_ratio=4,
      mlp_hidden_dim=0, mlp="gelu", norm="layernorm", position="learned", rope_base=10000.0,
      rope_scaling="none", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
      rope_high_freq_factor=4.0, rope_original_max_len=8192, attn_head_dim=0, norm_eps=0.0,
      qkv_bias=False, qk_norm=False, logit_softcap=0.0, tie_embeddings=True, dropout=cfg.dropout,
      use_bias=False, compute_dtype="float32", vocab_multiple=8, scan_layers=False,
      remat="none", parametrization="sp", mup_base_width=cfg.embed_dim, num_experts=0, experts_per_token=2, moe_every=1, moe_hidden_dim=0,
      num_shared_experts=0, shared_expert_gate=False, router_norm_topk=False,
      capacity_factor=0.0, router_aux_loss_coef=0.0, router_z_loss_coef=0.0, lora_rank=0,
      lora_alpha=16.0, lora_targets="attn")


class Vit(nnx.Module):
  """Patch embedding + learned positions + bidirectional pre-LN transformer, mean-pooled."""

  def __init__(self, cfg: ClassifierConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    P, D = cfg.patch_size, cfg.embed_dim
    num_patches = (cfg.image_height // P) * (cfg.image_width // P)
    block_cfg = _vit_block_config(cfg, num_patches)
    self.patch_embed = _dense(rngs, P * P, (P * P, D), (None, axes.EMBED))
    self.position_embed = axes.param(nnx.initializers.normal(0.02), rngs.params(),
                                     (num_patches, D), (None, axes.EMBED))
    self.blocks = nnx.List([layers.Block(block_cfg, rngs, causal=False)
                            for _ in range(cfg.num_layers)])
    self.ln_f = layers.LayerNorm(D, use_bias=True)
    self.head = _dense(rngs, D, (D, cfg.num_classes), (axes.EMBED, None))

  def __call__(self, images_BHW: jax.Array, dropout_key=None) -> jax.Array:
    P = self.cfg.patch_size
    B, H, W = images_BHW.shape
    patches = images_BHW.reshape(B, H // P, P, W // P, P).transpose(0, 1, 3, 2, 4)
    x_BTD = patches.reshape(B, -1, P * P) @ self.patch_embed[...] + self.position_embed[...]
    keys = [None] * len(self.blocks) if dropout_key is None else list(
        jax.random.split(dropout_key, len(self.blocks)))
    for block, key in zip(self.blocks, keys):
      x_BTD, _, _ = block(x_BTD, key=key)
    return self.ln_f(x_BTD).mean(axis=1) @ self.head[...]
