"""Hugging Face config.json <-> treadle model options, for the GPT-2 and Llama families.

Import reads both the transformers 4.x form (top-level rope_theta / rope_scaling,
torch_dtype) and the 5.x form (rope_parameters, dtype). Any setting that would change the
numbers and has no treadle equivalent is a one-line HfFormatError naming the field.
"""
from typing import Any

from treadle.hf.safetensors_io import HfFormatError
from treadle.model import gpt

GPT2 = "GPT2LMHeadModel"
LLAMA = "LlamaForCausalLM"
MISTRAL = "MistralForCausalLM"
QWEN2 = "Qwen2ForCausalLM"
SUPPORTED = (GPT2, LLAMA, MISTRAL, QWEN2)
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def architecture(hf_config: dict) -> str:
  names = hf_config.get("architectures") or []
  if len(names) != 1 or names[0] not in SUPPORTED:
    raise HfFormatError(f"config.json: architectures={names} is not supported "
                        f"(one of {list(SUPPORTED)})")
  return names[0]


def _require(hf_config: dict, field: str, allowed, default=None) -> None:
  value = hf_config.get(field, default)
  if value not in allowed:
    raise HfFormatError(f"config.json: {field}={value!r} has no treadle equivalent "
                        f"(supported: {list(allowed)})")


def _int(hf_config: dict, field: str) -> int:
  value = hf_config.get(field)
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise HfFormatError(f"config.json: {field}={value!r} must be a positive integer")
  return value


def _gpt2_options(c: dict) -> dict:
  _require(c, "activation_function", _TANH_GELUS, "gelu_new")
  for field, ok in (("scale_attn_weights", (True,)), ("scale_attn_by_inverse_layer_idx", (False,)),
                    ("add_cross_attention", (False,))):
    _require(c, field, ok, ok[0])
  embed = _int(c, "n_embd")
  return dict(num_layers=_int(c, "n_layer"), num_heads=_int(c, "n_head"), num_kv_heads=0,
              embed_dim=embed, mlp="gelu", mlp_hidden_dim=c.get("n_inner") or 4 * embed,
              norm="layernorm", position="learned", max_seq_len=_int(c, "n_positions"),
              use_bias=True, qkv_bias=False, norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
              tie_embeddings=bool(c.get("tie_word_embeddings", True)))


def _rope(c: dict) -> dict:
  """rope_base and the llama3 scaling from either config form."""
  params = c.get("rope_parameters") or {}
  theta = params.get("rope_theta", c.get("rope_theta", 10000.0))
  scaling = c.get("rope_scaling") or params
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind not in ("default", "llama3"):
    raise HfFormatError(f"config.json: rope_scaling type {kind!r} has no treadle equivalent "
                        "(supported: ['default', 'llama3'])")
  out = dict(rope_base=float(theta), rope_scaling="none")
  if kind == "llama3":
    out.update(rope_scaling="llama3", rope_scaling_factor=float(scaling["factor"]),
               rope_low_freq_factor=float(scaling["low_freq_factor"]),
               rope_high_freq_factor=float(scaling["high_freq_factor"]),
               rope_original_max_len=int(scaling["original_max_position_embeddings"]))
  return out


def _check_full_attention(c: dict, arch: str) -> None:
  """Sliding-window attention (Mistral v0.1, some Qwen2) is not in treadle."""
  window = c.get("sliding_window")
  if arch == MISTRAL and window is not None and window < c.get("max_position_embeddings", 0):
    raise HfFormatError(f"config.json: sliding_window={window} has no treadle equivalent "
                        "(full attention only)")
  if arch == QWEN2:
    _require(c, "use_sliding_window", (False,), False)
  layer_types = c.get("layer_types") or []
  if any(t != "full_attention" for t in layer_types):
    raise HfFormatError(f"config.json: layer_types={sorted(set(layer_types))} has no treadle "
                        "equivalent (full_attention only)")


def _llama_options(c: dict, arch: str) -> dict:
  _require(c, "hidden_act", ("silu",), "silu")
  _require(c, "pretraining_tp", (1,), 1)
  _check_full_attention(c, arch)
  heads, embed = _int(c, "num_attention_heads"), _int(c, "hidden_size")
  head_dim = c.get("head_dim") or embed // heads
  attention_bias, mlp_bias = bool(c.get("attention_bias")), bool(c.get("mlp_bias"))
  if attention_bias != mlp_bias:
    raise HfFormatError(f"config.json: attention_bias={attention_bias} with mlp_bias={mlp_bias} "
                        "has no treadle equivalent (biases are all on or all off)")
  return dict(num_layers=_int(c, "num_hidden_layers"), num_heads=heads,
              num_kv_heads=c.get("num_key_value_heads") or heads, embed_dim=embed,
              attn_head_dim=0 if head_dim * heads == embed else head_dim,
              mlp="swiglu", mlp_hidden_dim=_int(c, "intermediate_size"), norm="rmsnorm",
              position="rope", max_seq_len=_int(c, "max_position_embeddings"),
              use_bias=attention_bias, qkv_bias=arch == QWEN2 or attention_bias,
              norm_eps=float(c.get("rms_norm_eps", 1e-6)),
              tie_embeddings=bool(c.get("tie_word_embeddings", False)), **_rope(c))


def model_options(hf_config: dict) -> tuple[str, dict]:
  """(architecture, model.* options) for a HF config.json; vocab and dropout included."""
  arch = architecture(hf_config)
  options = _gpt2_options(hf_config) if arch == GPT2 else _llama_options(hf_config, arch)
  options.update(vocab_size=_int(hf_config, "vocab_size"), dropout=0.0, qk_norm=False,
                 logit_softcap=0.0)
  return arch, options


# -- export -------------------------------------------------------------------------------

def _unsupported(field: str, value: Any, arch: str) -> HfFormatError:
  return HfFormatError(f"model.{field}={value!r} has no {arch} equivalent")


def _check_common(cfg: gpt.ModelConfig, arch: str) -> None:
  if cfg.qk_norm:
    raise _unsupported("qk_norm", True, arch)
  if cfg.logit_softcap:
    raise _unsupported("logit_softcap", cfg.logit_softcap, arch)
  if cfg.lora_rank:
    raise HfFormatError("a LoRA run: pass --merge_lora to fold the adapters into the weights")


def export_architecture(cfg: gpt.ModelConfig) -> str:
  """GPT-2-style runs (learned positions) -> GPT2LMHeadModel; RoPE runs -> LlamaForCausalLM,
  or Qwen2ForCausalLM when only q/k/v carry biases."""
  if cfg.position == "learned":
    arch = GPT2
    if cfg.kv_heads != cfg.num_heads:
      raise _unsupported("num_kv_heads", cfg.num_kv_heads, arch)
    for field, wanted in (("norm", "layernorm"), ("mlp", "gelu"), ("attn_head_dim", 0),
                          ("qkv_bias", False)):
      if getattr(cfg, field) != wanted:
        raise _unsupported(field, getattr(cfg, field), arch)
  else:
    arch = QWEN2 if cfg.qkv_bias and not cfg.use_bias else LLAMA
    for field, wanted in (("norm", "rmsnorm"), ("mlp", "swiglu")):
      if getattr(cfg, field) != wanted:
        raise _unsupported(field, getattr(cfg, field), arch)
  _check_common(cfg, arch)
  return arch


def _gpt2_config(cfg: gpt.ModelConfig) -> dict:
  return {"model_type": "gpt2", "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
          "n_embd": cfg.embed_dim, "n_inner": cfg.hidden_dim, "n_positions": cfg.max_seq_len,
          "n_ctx": cfg.max_seq_len, "activation_function": "gelu_new",
          "layer_norm_epsilon": cfg.norm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
          "attn_pdrop": 0.0, "scale_attn_weights": True,
          "tie_word_embeddings": cfg.tie_embeddings}


def _llama_config(cfg: gpt.ModelConfig, arch: str) -> dict:
  rope_scaling = None
  if cfg.rope_scaling == "llama3":
    rope_scaling = {"rope_type": "llama3", "factor": cfg.rope_scaling_factor,
                    "low_freq_factor": cfg.rope_low_freq_factor,
                    "high_freq_factor": cfg.rope_high_freq_factor,
                    "original_max_position_embeddings": cfg.rope_original_max_len}
  out = {"model_type": "qwen2" if arch == QWEN2 else "llama",
         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
         "num_key_value_heads": cfg.kv_heads, "hidden_size": cfg.embed_dim,
         "head_dim": cfg.head_dim, "intermediate_size": cfg.hidden_dim, "hidden_act": "silu",
         "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_epsilon,
         "rope_theta": cfg.rope_base, "rope_scaling": rope_scaling, "attention_dropout": 0.0,
         "tie_word_embeddings": cfg.tie_embeddings}
  if arch == QWEN2:
    out.update(use_sliding_window=False, sliding_window=None)
  else:
    out.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
  return out


def hf_config(cfg: gpt.ModelConfig, token_ids: dict) -> tuple[str, dict]:
  """(architecture, config.json) for a plain (merged) treadle decoder config."""
  arch = export_architecture(cfg)
  body = _gpt2_config(cfg) if arch == GPT2 else _llama_config(cfg, arch)
  body.update(architectures=[arch], vocab_size=cfg.vocab_size, torch_dtype="float32",
              use_cache=True, **{k: token_ids.get(k) for k in TOKEN_ID_KEYS})
  return arch, body
