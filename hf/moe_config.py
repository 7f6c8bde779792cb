"""Hugging Face config.json <-> treadle MoE options, for Mixtral and Qwen2-MoE.

Both route as treadle does: softmax over all experts in fp32, top-k, renormalised (Mixtral
always, Qwen2-MoE with norm_topk_prob), no capacity limit. Qwen2-MoE adds one always-on shared
expert scaled by sigmoid(x . w) and may interleave dense blocks (decoder_sparse_step, the rule
of treadle's moe_every). A setting treadle cannot express is a one-line HfFormatError naming
the field. The attention, norms and RoPE are Llama's (hf/architectures.py reads them).
"""
import math
from typing import Any

from treadle.hf import config_fields as fields
from treadle.hf.config_fields import HfFormatError
from treadle.model import gpt

MIXTRAL = "MixtralForCausalLM"
QWEN2_MOE = "Qwen2MoeForCausalLM"
ARCHS = (MIXTRAL, QWEN2_MOE)
MAX_EXPERTS = 2**16
# a dense import: set, so a base config with MoE options (configs/moe_char_cpu.py) cannot
# turn an imported Llama into a mixture of experts
DENSE = {"num_experts": 0}


def _non_negative(c: fields.Fields, key: str, default: float) -> float:
  value = c.number(key, -math.inf, math.inf, default)
  if value < 0:
    raise c.error(key, f"={value} is out of range (must be >= 0)")
  return value


def _mixtral(c: fields.Fields, intermediate: int) -> dict:
  # MixtralConfig maps num_experts onto num_local_experts (its attribute_map)
  key = "num_experts" if c.body.get("num_local_experts") is None else "num_local_experts"
  experts = c.integer(key, 2, MAX_EXPERTS, 8)
  # HF multiplies the MoE input by U(1 - j, 1 + j) noise only in training (module.training):
  # inference computes the same numbers without it; treadle's training does not jitter
  _non_negative(c, "router_jitter_noise", 0.0)
  return dict(num_experts=experts, experts_per_token=c.integer("num_experts_per_tok", 1,
                                                               experts, 2),
              moe_every=1, moe_hidden_dim=intermediate, num_shared_experts=0,
              shared_expert_gate=False, router_norm_topk=True)


def _mlp_only_layers(c: fields.Fields, step: int, num_layers: int) -> None:
  """Layers forced dense. Treadle's MoE blocks follow decoder_sparse_step alone, so only the
  layers that rule already makes dense (or past the last layer) may be listed."""
  value = c.integers("mlp_only_layers", [])
  moe = sorted(i for i in set(value) if 0 <= i < num_layers and (i + 1) % step == 0)
  if moe:
    raise c.error("mlp_only_layers", f"={fields.shown(value)} has no treadle equivalent "
                  f"(layer {moe[0]} is MoE by decoder_sparse_step={step}; treadle's MoE "
                  "blocks are every decoder_sparse_step-th)")


def _qwen2_moe(c: fields.Fields, num_layers: int) -> dict:
  experts = c.integer("num_experts", 0, MAX_EXPERTS, 60)
  if experts == 1:
    raise c.error("num_experts", "=1 has no treadle equivalent (0 = dense, or at least 2)")
  step = c.integer("decoder_sparse_step", 1, fields.MAX_LAYERS, 1)
  if experts == 0 or step > num_layers:  # HF builds no MoE layer: a dense Qwen2 with biases
    return dict(DENSE)
  _mlp_only_layers(c, step, num_layers)
  hidden = c.integer("moe_intermediate_size", 1, fields.MAX_DIM, 1408)
  shared = c.integer("shared_expert_intermediate_size", 1, fields.MAX_DIM, 5632)
  if shared % hidden:
    raise c.error("shared_expert_intermediate_size", f"={shared} has no treadle equivalent "
                  f"(a multiple of moe_intermediate_size={hidden}: the shared expert is "
                  "num_shared_experts x moe_hidden_dim wide)")
  return dict(num_experts=experts,
              experts_per_token=c.integer("num_experts_per_tok", 1, experts, 4),
              moe_every=step, moe_hidden_dim=hidden, num_shared_experts=shared // hidden,
              shared_expert_gate=True, router_norm_topk=c.boolean("norm_topk_prob", False))


def options(c: fields.Fields, arch: str, num_layers: int, intermediate: int) -> dict:
  """The model.num_experts ... options of a Mixtral or Qwen2-MoE config.json."""
  out = _mixtral(c, intermediate) if arch == MIXTRAL else _qwen2_moe(c, num_layers)
  if not out["num_experts"]:
    return out
  # output_router_logits only adds the aux loss to HF's own training loss: not read
  out.update(capacity_factor=0.0, router_z_loss_coef=0.0,
             router_aux_loss_coef=_non_negative(c, "router_aux_loss_coef", 0.001))
  return out


# -- export -------------------------------------------------------------------------------

def _unsupported(field: str, value: Any, arch: str) -> HfFormatError:
  return HfFormatError(f"model.{field}={value!r} has no {arch} equivalent")


def export_architecture(cfg: gpt.ModelConfig) -> str:
  """Mixtral: every block MoE, no shared expert, renormalised top-k, no q/k/v biases.
  Otherwise Qwen2-MoE (gated shared expert; a run without one gets a zero shared expert,
  which adds exactly 0)."""
  mixtral = (not cfg.num_shared_experts and cfg.moe_every == 1 and cfg.router_norm_topk
             and not cfg.qkv_bias)
  arch = MIXTRAL if mixtral else QWEN2_MOE
  if cfg.num_shared_experts and not cfg.shared_expert_gate:
    raise _unsupported("shared_expert_gate", False, arch)  # HF's shared expert is gated
  # capacity_factor is not refused: transformers routes dropless, as treadle's cached
  # decoding does (model/moe.py), so the export generates as treadle's sampler does
  return arch


def shared_hidden_dim(cfg: gpt.ModelConfig) -> int:
  """The exported shared expert's width (the zero expert of a run without one: one expert)."""
  return max(cfg.num_shared_experts, 1) * cfg.expert_hidden_dim


def hf_fields(cfg: gpt.ModelConfig, arch: str) -> dict:
  """The MoE part of config.json."""
  common = {"num_experts_per_tok": cfg.experts_per_token,
            "router_aux_loss_coef": cfg.router_aux_loss_coef, "output_router_logits": False}
  if arch == MIXTRAL:
    return {**common, "model_type": "mixtral", "num_local_experts": cfg.num_experts,
            "intermediate_size": cfg.expert_hidden_dim, "router_jitter_noise": 0.0,
            "sliding_window": None}
  return {**common, "model_type": "qwen2_moe", "num_experts": cfg.num_experts,
          "intermediate_size": cfg.hidden_dim, "moe_intermediate_size": cfg.expert_hidden_dim,
          "shared_expert_intermediate_size": shared_hidden_dim(cfg),
          "decoder_sparse_step": cfg.moe_every, "mlp_only_layers": [],
          "norm_topk_prob": cfg.router_norm_topk, "qkv_bias": cfg.qkv_bias,
          "use_sliding_window": False, "sliding_window": None}
