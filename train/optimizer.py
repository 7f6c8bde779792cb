"""AdamW, Lion or Muon (+ AdamW) from config, sharing one lr schedule and global-norm clipping."""
from typing import Any

import jax
import optax
from jax.sharding import PartitionSpec
from optax import contrib

from treadle.model import axes
from treadle.train import config as config_lib

# Muon sees a weight as a map from its input (contracted) dims to its output dims. Logical
# names in one space describe one activation, so a weight's leading run of one space is its
# input and the named dims after it its output ('out' (heads, head_dim, embed): in heads+head_dim).
_SPACES = {axes.EMBED: "residual", axes.MLP: "mlp", axes.HEADS: "attention",
           axes.KV_HEADS: "attention", axes.HEAD_DIM: "attention"}


def schedule(cfg: config_lib.OptimizerConfig, num_steps: int) -> optax.Schedule:
  """Warmup from peak/(warmup+1) (so the first update is not a no-op), then cosine to min."""
  decay_steps = max(cfg.decay_steps or num_steps, cfg.warmup_steps + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=cfg.learning_rate / (cfg.warmup_steps + 1), peak_value=cfg.learning_rate,
      warmup_steps=cfg.warmup_steps, decay_steps=decay_steps, end_value=cfg.min_learning_rate)


def _decay_mask(params):
  # weight decay on matrices and embeddings only, never on norm scales or biases
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _is_spec(x) -> bool:
  return isinstance(x, (PartitionSpec, tuple))


def muon_dims(spec) -> contrib.MuonDimensionNumbers | None:
  """Muon's (input dims, output dims) of a param from its logical names; None = AdamW.

  'layers' and unnamed dims (the q/k/v or gate/up stack of a fused weight) are batch dims:
  Muon orthogonalises each matrix of the stack on its own. Anything with a 'vocab' dim
  (embeddings, LM head) and anything without named dims on both sides (1-D params, biases,
  position tables, patch embeddings, classifier heads, conv kernels) goes to AdamW.
  """
  names = tuple(spec) if _is_spec(spec) else ()
  if axes.VOCAB in names:
    return None
  named = [i for i, n in enumerate(names) if n is not None and n != axes.LAYERS]
  space = [_SPACES.get(names[i], names[i]) for i in named]  # an unknown name is its own space
  n_in = next((k for k, s in enumerate(space) if s != space[0]), len(named))
  if n_in == len(named):
    return None
  return contrib.MuonDimensionNumbers(tuple(named[:n_in]), tuple(named[n_in:]))


def _is_dims(x) -> bool:
  return x is None or isinstance(x, contrib.MuonDimensionNumbers)


def _all_dims(param_specs: Any) -> Any:
  return jax.tree.map(muon_dims, param_specs, is_leaf=_is_spec)


def _labels(dims: Any) -> Any:
  return jax.tree.map(lambda d: "adamw" if d is None else "muon", dims, is_leaf=_is_dims)


def muon_labels(param_specs: Any) -> Any:
  """'muon' or 'adamw' for every param, from the logical specs tree of the params."""
  return _labels(_all_dims(param_specs))


def _adamw(cfg: config_lib.OptimizerConfig, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                     mask=_decay_mask)


def _muon(cfg: config_lib.OptimizerConfig, lr: optax.Schedule,
          param_specs: Any) -> optax.GradientTransformation:
  """optax's Muon on hidden matrices, the AdamW of name='adamw' on the rest."""
  if param_specs is None:
    raise ValueError("optimizer.name='muon' needs the params' logical axis specs "
                     "(build(..., param_specs=state.model_graph(model_cfg)[2]))")
  dims = _all_dims(param_specs)
  labels = _labels(dims)
  if "muon" not in jax.tree.leaves(labels):  # e.g. the CNN: it would silently be AdamW
    raise ValueError("optimizer.name='muon': no parameter has named input and output dims "
                     "(see optimizer.muon_dims); use adamw")
  ratio = cfg.muon_learning_rate / cfg.learning_rate
  # contrib.muon sees only its partition: AdamW params are MaskedNodes there, so its own
  # Adam fallback (unmasked weight decay, Nesterov) receives nothing
  masked = jax.tree.map(lambda d: optax.MaskedNode() if d is None else d, dims, is_leaf=_is_dims)
  muon = contrib.muon(
      lambda step: lr(step) * ratio, beta=cfg.muon_momentum,
      # decay coupled to the lr as in AdamW: a matrix shrinks by learning_rate(t) * weight_decay
      weight_decay=cfg.weight_decay / ratio, muon_weight_dimension_numbers=masked)
  return optax.partition({"muon": muon, "adamw": _adamw(cfg, lr)}, labels)


def _lion(cfg: config_lib.OptimizerConfig, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.lion(lr, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                    mask=_decay_mask)


def _hidden_scaled(make, cfg: config_lib.OptimizerConfig, lr: optax.Schedule, param_specs: Any,
                   hidden_lr_scale: float) -> optax.GradientTransformation:
  """mup: the optimizer `make` with lr x hidden_lr_scale (1/m) on the hidden matrices (the
  params Muon would take: named input and output dims, no vocab) and lr on the rest."""
  if param_specs is None:
    raise ValueError("model.parametrization='mup' needs the params' logical axis specs")
  hidden = jax.tree.map(lambda d: "vector" if d is None else "hidden", _all_dims(param_specs),
                        is_leaf=_is_dims)
  return optax.partition({"hidden": make(cfg, lambda step: lr(step) * hidden_lr_scale),
                          "vector": make(cfg, lr)}, hidden)


def hidden_lr_scale(model_cfg) -> float | None:
  """mup: 1/m for the hidden matrices' AdamW/Lion lr (`build`); None under sp (or for a
  model without the key, the image models)."""
  return (1.0 / model_cfg.width_mult
          if getattr(model_cfg, "parametrization", "sp") == "mup" else None)


def build(cfg: config_lib.OptimizerConfig, num_steps: int, param_specs: Any = None,
          hidden_lr_scale: float | None = None) -> optax.GradientTransformation:
  """Global-norm clipping, then the optimizer cfg.name, all on schedule(cfg, num_steps).

  param_specs: the logical axis names of every param (`state.model_graph(...)[2]`); 'muon'
  reads them, to pick its matrices and their input/output dims, and requires them.
  'lion' reads learning_rate, beta1, beta2 as optax.lion's (it wants a 3-10x smaller lr).
  Every optimizer shrinks matrices by learning_rate(t) * weight_decay per step.
  hidden_lr_scale (mup: 1/m, `gpt.ModelConfig.width_mult`): AdamW's and Lion's lr on hidden
  matrices is multiplied by it. Muon ignores it: its orthogonalised update already has a
  spectral norm independent of width (scaled by the matrix's shape), which is what mup's lr
  rule gives Adam; its AdamW part (embeddings, norms, biases) has mup's unscaled lr anyway.
  """
  lr = schedule(cfg, num_steps)
  if cfg.name == "muon":
    opt = _muon(cfg, lr, param_specs)
  elif hidden_lr_scale is not None:
    opt = _hidden_scaled(_adamw if cfg.name == "adamw" else _lion, cfg, lr, param_specs,
                         hidden_lr_scale)
  else:
    opt = (_adamw if cfg.name == "adamw" else _lion)(cfg, lr)
  parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
  return optax.chain(*parts, opt)
