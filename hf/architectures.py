"""Hugging Face config.json <-> treadle model options, for the GPT-2 and Llama families
(the MoE options of Mixtral and Qwen2-MoE: hf/moe_config.py).

Import reads both the transformers 4.x form (top-level rope_theta / rope_scaling,
torch_dtype) and the 5.x form (rope_parameters, dtype). Any setting that would change the
numbers and has no treadle equivalent is a one-line HfFormatError naming the field.
"""
from typing import Any

from treadle.hf import config_fields as fields
from treadle.hf import moe_config
from treadle.hf.config_fields import HfFormatError
from treadle.model import gpt

GPT2 = "GPT2LMHeadModel"
LLAMA = "LlamaForCausalLM"
MISTRAL = "MistralForCausalLM"
QWEN2 = "Qwen2ForCausalLM"
MIXTRAL, QWEN2_MOE = moe_config.MIXTRAL, moe_config.QWEN2_MOE
SUPPORTED = (GPT2, LLAMA, MISTRAL, QWEN2, MIXTRAL, QWEN2_MOE)
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
GENERATION_CONFIG = "generation_config.json"
_EPS = (0.0, 1.0)  # a norm epsilon is in (0, 1]


def _fields(hf_config: Any) -> fields.Fields:
  return fields.Fields(hf_config, "config.json")


def architecture(hf_config: dict) -> str:
  c = _fields(hf_config)
  names = c.strings("architectures", [])
  if len(names) != 1 or names[0] not in SUPPORTED:
    raise HfFormatError(f"config.json: architectures={names} is not supported "
                        f"(one of {list(SUPPORTED)})")
  c.string("model_type", None)  # not used, but a model_type that is not a string is damage
  return names[0]


def _dim(c: fields.Fields, key: str, default: Any = fields.REQUIRED) -> Any:
  return c.integer(key, 1, fields.MAX_DIM, default)


def _gpt2_options(c: fields.Fields) -> dict:
  c.choice("activation_function", _TANH_GELUS, "gelu_new")
  for field, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
    c.choice(field, (ok,), ok)
  embed = _dim(c, "n_embd")
  return dict(num_layers=c.integer("n_layer", 1, fields.MAX_LAYERS), num_heads=_dim(c, "n_head"),
              num_kv_heads=0, embed_dim=embed, mlp="gelu",
              mlp_hidden_dim=_dim(c, "n_inner", 4 * embed), norm="layernorm",
              position="learned", max_seq_len=c.integer("n_positions", 1, fields.MAX_POSITIONS),
              use_bias=True, qkv_bias=False,
              norm_eps=c.number("layer_norm_epsilon", *_EPS, 1e-5),
              tie_embeddings=c.boolean("tie_word_embeddings", True))


def _rope(c: fields.Fields, default_theta: float) -> dict:
  """rope_base and the llama3 scaling from either config form (4.x: top-level rope_theta and
  rope_scaling; 5.x: both in rope_parameters)."""
  params = c.mapping("rope_parameters")
  theta = c.number("rope_theta", 0.0, 1e12, default_theta)
  if params is not None:
    theta = params.number("rope_theta", 0.0, 1e12, theta)
  scaling = c.mapping("rope_scaling")
  if scaling is None or not scaling.body:
    scaling = params
  kind = "default"
  if scaling is not None:
    kind = scaling.string("rope_type", None) or scaling.string("type", "default")
  if kind not in ("default", "llama3"):
    raise HfFormatError(f"config.json: rope_scaling type {kind!r} has no treadle equivalent "
                        "(supported: ['default', 'llama3'])")
  out = dict(rope_base=theta, rope_scaling="none")
  if kind == "llama3":
    factor = lambda key: scaling.number(key, 0.0, 1e6)
    out.update(rope_scaling="llama3", rope_scaling_factor=factor("factor"),
               rope_low_freq_factor=factor("low_freq_factor"),
               rope_high_freq_factor=factor("high_freq_factor"),
               rope_original_max_len=scaling.integer("original_max_position_embeddings", 1,
                                                     fields.MAX_POSITIONS))
  return out


def _check_full_attention(c: fields.Fields, arch: str, max_len: int) -> None:
  """Sliding-window attention (Mistral v0.1, some Qwen2) is not in treadle."""
  if arch in (MISTRAL, MIXTRAL):
    window = c.integer("sliding_window", 1, 2**62, None)
    if window is not None and window < max_len:
      raise HfFormatError(f"config.json: sliding_window={window} has no treadle equivalent "
                          "(full attention only)")
  if arch in (QWEN2, QWEN2_MOE):  # Qwen2-MoE then writes sliding_window 0: not read
    c.choice("use_sliding_window", (False,), False)
  layer_types = c.strings("layer_types", [])
  if any(t != "full_attention" for t in layer_types):
    raise HfFormatError(f"config.json: layer_types={sorted(set(layer_types))} has no treadle "
                        "equivalent (full_attention only)")


def _biases(c: fields.Fields, arch: str) -> tuple[bool, bool]:
  """(use_bias, qkv_bias): Mixtral has no biases, Qwen2-MoE q/k/v ones unless qkv_bias is
  false (transformers 5); the others read attention_bias and mlp_bias."""
  if arch == MIXTRAL:
    return False, False
  if arch == QWEN2_MOE:
    return False, c.boolean("qkv_bias", True)
  attention_bias = c.boolean("attention_bias", False)
  mlp_bias = c.boolean("mlp_bias", False)
  if attention_bias != mlp_bias:
    raise HfFormatError(f"config.json: attention_bias={attention_bias} with mlp_bias={mlp_bias} "
                        "has no treadle equivalent (biases are all on or all off)")
  return attention_bias, arch == QWEN2 or attention_bias


def _llama_options(c: fields.Fields, arch: str) -> dict:
  c.choice("hidden_act", ("silu",), "silu")
  c.choice("pretraining_tp", (1,), 1)
  max_len = c.integer("max_position_embeddings", 1, fields.MAX_POSITIONS)
  _check_full_attention(c, arch, max_len)
  heads, embed = _dim(c, "num_attention_heads"), _dim(c, "hidden_size")
  head_dim = _dim(c, "head_dim", embed // heads)
  use_bias, qkv_bias = _biases(c, arch)
  layers = c.integer("num_hidden_layers", 1, fields.MAX_LAYERS)
  hidden = _dim(c, "intermediate_size")
  moe = (moe_config.options(c, arch, layers, hidden) if arch in moe_config.ARCHS
         else moe_config.DENSE)
  rope = _rope(c, 1e6 if arch == MIXTRAL else 10000.0)  # transformers' default_theta
  return dict(num_layers=layers, num_heads=heads,
              num_kv_heads=_dim(c, "num_key_value_heads", heads), embed_dim=embed,
              attn_head_dim=0 if head_dim * heads == embed else head_dim,
              mlp="swiglu", mlp_hidden_dim=hidden, norm="rmsnorm",
              position="rope", max_seq_len=max_len, use_bias=use_bias, qkv_bias=qkv_bias,
              norm_eps=c.number("rms_norm_eps", *_EPS, 1e-6),
              tie_embeddings=c.boolean("tie_word_embeddings", False), **rope, **moe)


def model_options(hf_config: dict) -> tuple[str, dict]:
  """(architecture, model.* options) for a HF config.json; vocab and dropout included.
  Every value read is type- and range-checked (a one-line HfFormatError naming the key)."""
  arch = architecture(hf_config)
  c = _fields(hf_config)
  options = ({**_gpt2_options(c), **moe_config.DENSE} if arch == GPT2 else
             _llama_options(c, arch))
  options.update(vocab_size=c.integer("vocab_size", 1, fields.MAX_VOCAB), dropout=0.0,
                 qk_norm=False, logit_softcap=0.0)
  return arch, options


def token_ids(hf_config: dict, vocab_size: int) -> dict:
  """bos/eos/pad_token_id, each null or an id below vocab_size (eos: or a list of ids)."""
  c = _fields(hf_config)
  return {key: c.token_ids(key, vocab_size, many=key == "eos_token_id")
          for key in TOKEN_ID_KEYS}


def generation_token_ids(generation_config: dict, vocab_size: int) -> dict:
  """generation_config.json's eos_token_id (an id or a list of ids below vocab_size) as
  `generation_eos_token_id`, where it has one: generate() stops at these as well."""
  c = fields.Fields(generation_config, GENERATION_CONFIG)
  eos = c.token_ids("eos_token_id", vocab_size, many=True)
  return {} if eos is None else {"generation_eos_token_id": eos}


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
  or Qwen2ForCausalLM when only q/k/v carry biases; RoPE MoE runs -> MixtralForCausalLM or
  Qwen2MoeForCausalLM (hf/moe_config.py)."""
  if cfg.position == "learned":
    arch = GPT2
    if cfg.num_experts:
      raise _unsupported("num_experts", cfg.num_experts, arch)
    if cfg.kv_heads != cfg.num_heads:
      raise _unsupported("num_kv_heads", cfg.num_kv_heads, arch)
    for field, wanted in (("norm", "layernorm"), ("mlp", "gelu"), ("attn_head_dim", 0),
                          ("qkv_bias", False)):
      if getattr(cfg, field) != wanted:
        raise _unsupported(field, getattr(cfg, field), arch)
  else:
    arch = QWEN2 if cfg.qkv_bias and not cfg.use_bias else LLAMA
    if cfg.num_experts:
      arch = moe_config.export_architecture(cfg)
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
  elif arch in moe_config.ARCHS:
    out.update(moe_config.hf_fields(cfg, arch))
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
