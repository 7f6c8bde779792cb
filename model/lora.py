"""LoRA: which parameters are adapters, and folding adapters into their base weights.

An adapted weight W (a `layers.Projection`) holds `lora/a` [in..., r] and `lora/b` [r, out...];
its output is x W + (alpha / r) (x A) B. Merging replaces W by W + (alpha / r) A B and drops
the adapter, giving a plain model of the same function.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from treadle.model import gpt

ADAPTER_KEY = "lora"


def trainable_mask(params: Any) -> Any:
  """True on adapter leaves, False on the frozen base parameters."""
  def is_adapter(path, _):
    return any(getattr(k, "key", None) == ADAPTER_KEY for k in path)
  return jax.tree_util.tree_map_with_path(is_adapter, params)


def _fold(node: dict, scale: float) -> dict:
  """A Projection's (or MoE experts') params {w, bias?, lora: {a, b}} -> {w + scale * a b,
  bias?}. Leading axes shared by a, b and w (stacked layers, experts) are batch axes."""
  out = {k: v for k, v in node.items() if k != ADAPTER_KEY}
  a, b = node[ADAPTER_KEY]["a"], node[ADAPTER_KEY]["b"]
  contract = lambda a, b: jnp.tensordot(a, b, 1)  # [in..., r] x [r, out...] -> W's shape
  for _ in range(a.ndim + b.ndim - 2 - node["w"].ndim):
    contract = jax.vmap(contract)
  delta = contract(a, b)
  out["w"] = (node["w"] + scale * delta).astype(node["w"].dtype)
  return out


def merge(params: Any, cfg: gpt.ModelConfig) -> tuple[Any, gpt.ModelConfig]:
  """(params without adapters, the model config without LoRA) computing the same function."""
  scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0

  def walk(node):
    if not isinstance(node, dict):
      return node
    if ADAPTER_KEY in node:
      return _fold(node, scale)
    return {k: walk(v) for k, v in node.items()}

  return walk(params), dataclasses.replace(cfg, lora_rank=0)


def base_params(params: Any) -> Any:
  """The parameters without their adapters (what a LoRA run starts from and never changes)."""
  if not isinstance(params, dict):
    return params
  return {k: base_params(v) for k, v in params.items() if k != ADAPTER_KEY}


def stop_base_gradients(params: Any) -> Any:
  """With adapters present, the base gets no gradient (so no weight-gradient matmuls)."""
  mask = trainable_mask(params)
  if not any(jax.tree.leaves(mask)):
    return params
  return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, mask)


def with_adapters(base: Any, fresh: Any) -> Any:
  """`fresh` parameters whose base leaves are replaced by `base` (same tree minus adapters)."""
  def walk(b, f):
    if not isinstance(f, dict):
      return b
    return {k: (v if k == ADAPTER_KEY else walk(b[k], v)) for k, v in f.items()}
  return walk(base, fresh)
