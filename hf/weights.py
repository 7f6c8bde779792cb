"""Which Hugging Face tensors make each treadle parameter, and how (transpose, fuse, pad).

A Link ties one treadle parameter (a path in the pure params dict of an unscanned decoder)
to the HF tensors it is built from. GPT-2's Conv1D weights are stored (in, out) like
treadle's; Llama's nn.Linear weights are (out, in) and are transposed. Fused weights
(GPT-2's c_attn; treadle's qkv/kv and SwiGLU gate|up) are split or stacked. The vocabulary
axis is zero-padded to the model's padded size (those logits are masked) and cut back on
export. A Link with no path exists only on the HF side: zeros on export (GPT-2's biases of
a bias-free run). MoE blocks' tensors (Mixtral, Qwen2-MoE): hf/moe_weights.py.
"""
import dataclasses
from typing import Callable

import numpy as np

from treadle.hf import architectures as arch_lib
from treadle.hf import moe_weights
from treadle.model import gpt

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Link:
  path: tuple | None                        # treadle parameter path; None = HF-only zeros
  hf_names: tuple[str, ...]
  hf_shapes: tuple[Shape, ...]
  to_treadle: Callable[..., np.ndarray]      # HF arrays -> the treadle array
  to_hf: Callable[[np.ndarray], tuple]       # the treadle array -> HF arrays


def _same(x):
  return x


def _one(fn):
  return lambda x: (fn(x),)


def _pad_rows(rows: int):
  return lambda x: np.pad(x, ((0, rows - x.shape[0]), (0, 0)))


def _gpt2_links(cfg: gpt.ModelConfig, prefix: str) -> list[Link]:
  D, H, K, F, V = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.hidden_dim, cfg.vocab_size
  Vp, P = cfg.padded_vocab_size, cfg.max_seq_len
  links = [Link(("token_embed",), (f"{prefix}wte.weight",), ((V, D),), _pad_rows(Vp),
                _one(lambda w: w[:V])),
           Link(("position_embed",), (f"{prefix}wpe.weight",), ((P, D),), _same, _one(_same))]

  def add(path, name, hf_shape, shape, bias=False):
    """A weight stored (in, out) as treadle does, only reshaped."""
    if bias and not cfg.use_bias:
      links.append(Link(None, (name,), (hf_shape,), None, lambda _: (np.zeros(hf_shape),)))
      return
    links.append(Link(path, (name,), (hf_shape,), lambda w: w.reshape(shape),
                      _one(lambda w: w.reshape(hf_shape))))

  def norm(path, name):
    add((*path, "scale"), f"{name}.weight", (D,), (D,))
    add((*path, "bias"), f"{name}.bias", (D,), (D,), bias=True)

  for i in range(cfg.num_layers):
    b, h = ("blocks", i), f"{prefix}h.{i}."
    norm((*b, "ln1"), f"{h}ln_1")
    add((*b, "attn", "qkv", "w"), f"{h}attn.c_attn.weight", (D, 3 * D), (D, 3, H, K))
    add((*b, "attn", "qkv", "bias"), f"{h}attn.c_attn.bias", (3 * D,), (3, H, K), bias=True)
    add((*b, "attn", "out", "w"), f"{h}attn.c_proj.weight", (D, D), (H, K, D))
    add((*b, "attn", "out", "bias"), f"{h}attn.c_proj.bias", (D,), (D,), bias=True)
    norm((*b, "ln2"), f"{h}ln_2")
    add((*b, "mlp", "fc", "w"), f"{h}mlp.c_fc.weight", (D, F), (D, F))
    add((*b, "mlp", "fc", "bias"), f"{h}mlp.c_fc.bias", (F,), (F,), bias=True)
    add((*b, "mlp", "proj", "w"), f"{h}mlp.c_proj.weight", (F, D), (F, D))
    add((*b, "mlp", "proj", "bias"), f"{h}mlp.c_proj.bias", (D,), (D,), bias=True)
  norm(("ln_f",), f"{prefix}ln_f")
  if not cfg.tie_embeddings:
    links.append(Link(("lm_head",), ("lm_head.weight",), ((V, D),),
                      lambda w: _pad_rows(Vp)(w).T, _one(lambda w: w[:, :V].T)))
  return links


def _linear(out_shape: Shape):
  """nn.Linear (out, in) -> treadle (in, *out_shape), and back."""
  return (lambda w: w.T.reshape(w.shape[1], *out_shape),
          _one(lambda w: w.reshape(w.shape[0], -1).T))


def _fused_linear(parts: int, out_shape: Shape):
  """`parts` nn.Linear weights (out, in) -> treadle (in, parts, *out_shape), and back."""
  def to_treadle(*ws):
    return np.stack([w.T for w in ws], axis=1).reshape(ws[0].shape[1], parts, *out_shape)
  return to_treadle, lambda w: tuple(w[:, j].reshape(w.shape[0], -1).T for j in range(parts))


def _fused_bias(parts: int, out_shape: Shape):
  return (lambda *bs: np.stack(bs).reshape(parts, *out_shape),
          lambda b: tuple(b[j].reshape(-1) for j in range(parts)))


def _llama_attention(cfg: gpt.ModelConfig, b: tuple, h: str) -> list[Link]:
  D, H, G, K = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim
  names = lambda kind, projs: tuple(f"{h}self_attn.{p}_proj.{kind}" for p in projs)
  links = []
  if G == H:
    groups = [("qkv", "qkv", (H, K))]
  else:
    groups = [("q", "q", (H, K)), ("kv", "kv", (G, K))]
  for weight, projs, out_shape in groups:
    rows = [out_shape[0] * K] * len(projs)
    fused = len(projs) > 1
    to_t, to_h = _fused_linear(len(projs), out_shape) if fused else _linear(out_shape)
    links.append(Link((*b, "attn", weight, "w"), names("weight", projs),
                      tuple((r, D) for r in rows), to_t, to_h))
    if cfg.qkv_bias or cfg.use_bias:  # use_bias: q/k/v carry biases as every Linear does
      to_t, to_h = (_fused_bias(len(projs), out_shape) if fused else
                    (lambda x, s=out_shape: x.reshape(s), _one(lambda x: x.reshape(-1))))
      links.append(Link((*b, "attn", weight, "bias"), names("bias", projs),
                        tuple((r,) for r in rows), to_t, to_h))
  to_t = lambda w: w.T.reshape(H, K, D)
  links.append(Link((*b, "attn", "out", "w"), names("weight", "o"), ((D, H * K),), to_t,
                    _one(lambda w: w.reshape(H * K, D).T)))
  if cfg.use_bias:
    links.append(Link((*b, "attn", "out", "bias"), names("bias", "o"), ((D,),), _same,
                      _one(_same)))
  return links


def _llama_links(cfg: gpt.ModelConfig, arch: str, fused_experts: bool) -> list[Link]:
  D, F, V, Vp = cfg.embed_dim, cfg.hidden_dim, cfg.vocab_size, cfg.padded_vocab_size
  vector = lambda path, name, n: Link(path, (name,), ((n,),), _same, _one(_same))
  links = [Link(("token_embed",), ("model.embed_tokens.weight",), ((V, D),), _pad_rows(Vp),
                _one(lambda w: w[:V]))]
  for i in range(cfg.num_layers):
    b, h = ("blocks", i), f"model.layers.{i}."
    links.append(vector((*b, "ln1", "scale"), f"{h}input_layernorm.weight", D))
    links += _llama_attention(cfg, b, h)
    links.append(vector((*b, "ln2", "scale"), f"{h}post_attention_layernorm.weight", D))
    if cfg.is_moe_block(i):
      links += [Link(*spec) for spec in moe_weights.block_specs(cfg, b, h, arch, fused_experts)]
      continue
    to_t, to_h = _fused_linear(2, (F,))
    links.append(Link((*b, "mlp", "fc", "w"), (f"{h}mlp.gate_proj.weight",
                                               f"{h}mlp.up_proj.weight"), ((F, D), (F, D)),
                      to_t, to_h))
    links.append(Link((*b, "mlp", "proj", "w"), (f"{h}mlp.down_proj.weight",), ((D, F),),
                      lambda w: w.T, _one(lambda w: w.T)))
    if cfg.use_bias:
      to_t, to_h = _fused_bias(2, (F,))
      links.append(Link((*b, "mlp", "fc", "bias"), (f"{h}mlp.gate_proj.bias",
                                                    f"{h}mlp.up_proj.bias"), ((F,), (F,)),
                        to_t, to_h))
      links.append(vector((*b, "mlp", "proj", "bias"), f"{h}mlp.down_proj.bias", D))
  links.append(vector(("ln_f", "scale"), "model.norm.weight", D))
  if not cfg.tie_embeddings:
    links.append(Link(("lm_head",), ("lm_head.weight",), ((V, D),),
                      lambda w: _pad_rows(Vp)(w).T, _one(lambda w: w[:, :V].T)))
  return links


def links(cfg: gpt.ModelConfig, arch: str, gpt2_prefix: str = "transformer.",
          fused_experts: bool = False) -> list[Link]:
  """Every treadle parameter of `cfg` (unscanned, no adapters) and its HF sources; MoE
  experts per expert (the hub's layout) or, with fused_experts, transformers' fused one."""
  if arch == arch_lib.GPT2:
    return _gpt2_links(cfg, gpt2_prefix)
  return _llama_links(cfg, arch, fused_experts)


# HF tensors that are buffers or duplicates, not weights of their own
def ignorable(name: str, cfg: gpt.ModelConfig) -> bool:
  return (name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))
          or (name == "lm_head.weight" and cfg.tie_embeddings))
