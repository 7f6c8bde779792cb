"""Which Hugging Face tensors make each parameter of a treadle MoE block (Mixtral, Qwen2-MoE).

Two layouts are read. The hub's (and what transformers' save_pretrained writes by default):
one nn.Linear (out, in) per expert and projection (Mixtral `block_sparse_moe.experts.J.w1`
gate / `w3` up / `w2` down, Qwen2-MoE `mlp.experts.J.gate_proj` / `up_proj` / `down_proj`).
transformers' in-memory one (save_pretrained(save_original_format=False)): every expert in one
tensor, `mlp.experts.gate_up_proj` [E, 2F, D] (gate rows first) and `down_proj` [E, D, F].
Export writes the hub's, which every transformers version loads.

treadle's block (model/moe.py): router [D, E] (x @ router), fc/w [E, D, 2, F] (gate, up),
proj/w [E, F, D], a dense shared expert (shared/fc/w [D, 2, Fs], shared/proj/w [Fs, D]) and its
gate [D, 1]. A spec is (path, HF names, HF shapes, to_treadle, to_hf): hf/weights.py's Link.
"""
import numpy as np

from treadle.hf import moe_config
from treadle.model import gpt

FUSED_SUFFIX = ".mlp.experts.gate_up_proj"


def fused_layout(tensor_names) -> bool:
  """Whether a checkpoint holds the experts fused (transformers' in-memory layout)."""
  return any(name.endswith(FUSED_SUFFIX) for name in tensor_names)


def _transposed():
  return lambda w: w.T, lambda w: (w.T,)


def _gate_up(stacked: bool):
  """n gate then n up weights (F, D) -> [n, D, 2, F] (stacked: the experts) or, for one MLP
  (n = 1), [D, 2, F]; and back."""
  def to_treadle(*ws):
    n = len(ws) // 2
    out = np.stack([np.stack(ws[:n]), np.stack(ws[n:])], axis=1)  # [n, 2, F, D]
    out = out.transpose(0, 3, 1, 2)
    return out if stacked else out[0]

  def to_hf(w):
    w = (w if stacked else w[None]).transpose(0, 2, 3, 1)  # [n, 2, F, D]
    return tuple(w[:, 0]) + tuple(w[:, 1])
  return to_treadle, to_hf


def _downs():
  """E down weights (D, F) -> [E, F, D]."""
  return (lambda *ws: np.stack(ws).transpose(0, 2, 1),
          lambda w: tuple(w.transpose(0, 2, 1)))


def _fused_gate_up():
  """[E, 2F, D] (gate rows, then up rows) <-> [E, D, 2, F]."""
  def to_treadle(w):
    E, F2, D = w.shape
    return w.reshape(E, 2, F2 // 2, D).transpose(0, 3, 1, 2)

  def to_hf(w):
    E, D, _, F = w.shape
    return (w.transpose(0, 2, 3, 1).reshape(E, 2 * F, D),)
  return to_treadle, to_hf


def _experts(cfg: gpt.ModelConfig, b: tuple, h: str, arch: str, fused: bool) -> list[tuple]:
  E, D, F = cfg.num_experts, cfg.embed_dim, cfg.expert_hidden_dim
  mlp = (*b, "mlp")
  if fused:  # both architectures: transformers renames Mixtral's block_sparse_moe to mlp
    return [((*mlp, "router"), (f"{h}mlp.gate.weight",), ((E, D),), *_transposed()),
            ((*mlp, "fc", "w"), (f"{h}mlp.experts.gate_up_proj",), ((E, 2 * F, D),),
             *_fused_gate_up()),
            ((*mlp, "proj", "w"), (f"{h}mlp.experts.down_proj",), ((E, D, F),),
             lambda w: w.transpose(0, 2, 1), lambda w: (w.transpose(0, 2, 1),))]
  if arch == moe_config.MIXTRAL:
    prefix, gate, up, down = f"{h}block_sparse_moe.", "w1", "w3", "w2"
  else:
    prefix, gate, up, down = f"{h}mlp.", "gate_proj", "up_proj", "down_proj"
  name = lambda j, proj: f"{prefix}experts.{j}.{proj}.weight"
  return [((*mlp, "router"), (f"{prefix}gate.weight",), ((E, D),), *_transposed()),
          ((*mlp, "fc", "w"), tuple(name(j, p) for p in (gate, up) for j in range(E)),
           ((F, D),) * (2 * E), *_gate_up(True)),
          ((*mlp, "proj", "w"), tuple(name(j, down) for j in range(E)), ((D, F),) * E,
           *_downs())]


def _shared(cfg: gpt.ModelConfig, b: tuple, h: str) -> list[tuple]:
  """Qwen2-MoE's shared expert and its gate; a run without one exports zeros for them (an
  expert of exactly 0 output), so the spec's path is None (hf/weights.py's HF-only tensor)."""
  D, Fs = cfg.embed_dim, moe_config.shared_hidden_dim(cfg)
  names = tuple(f"{h}mlp.shared_expert.{p}_proj.weight" for p in ("gate", "up"))
  specs = [((*b, "mlp", "shared", "fc", "w"), names, ((Fs, D),) * 2, *_gate_up(False)),
           ((*b, "mlp", "shared", "proj", "w"), (f"{h}mlp.shared_expert.down_proj.weight",),
            ((D, Fs),), *_transposed()),
           ((*b, "mlp", "shared_gate"), (f"{h}mlp.shared_expert_gate.weight",), ((1, D),),
            *_transposed())]
  if cfg.num_shared_experts:
    return specs
  return [(None, names, shapes, None, lambda _, s=shapes: tuple(np.zeros(x) for x in s))
          for _, names, shapes, _, _ in specs]


def block_specs(cfg: gpt.ModelConfig, b: tuple, h: str, arch: str, fused: bool) -> list[tuple]:
  """The feed-forward of MoE block `b` (treadle path prefix) / `h` (HF name prefix)."""
  specs = _experts(cfg, b, h, arch, fused)
  if arch == moe_config.QWEN2_MOE:
    specs += _shared(cfg, b, h)
  return specs
