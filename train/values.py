"""Every float of a run's config is finite and in its range, checked before anything is written.

The dataclasses' own checks compare with `<`, which NaN passes silently (`nan <= 0` is False),
so a NaN learning rate used to start a run that could only diverge.
"""
import dataclasses
import math
from typing import Any, Callable

# dotted key -> (allowed range in words, test); a key a section doesn't have is skipped (the
# classifier has no rope_base). Fractions with their own open-interval checks are left out.
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "optimizer.learning_rate": ("> 0", lambda v: v > 0),
    "optimizer.min_learning_rate": (">= 0", lambda v: v >= 0),
    "optimizer.beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "optimizer.beta2": ("in [0, 1)", lambda v: 0 <= v < 1),
    "optimizer.weight_decay": (">= 0", lambda v: v >= 0),
    "optimizer.grad_clip_norm": (">= 0", lambda v: v >= 0),
    "optimizer.muon_learning_rate": ("> 0", lambda v: v > 0),
    "optimizer.muon_momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "train.early_stopping_min_delta": (">= 0", lambda v: v >= 0),
    "train.target_val_loss": (">= 0 (0 = off)", lambda v: v >= 0),
    "model.dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "model.rope_base": ("> 0", lambda v: v > 0),
    "model.logit_softcap": (">= 0 (0 = off)", lambda v: v >= 0),
    "finetune.lora_alpha": ("> 0", lambda v: v > 0),
}


def _floats(section: str, value: Any):
  for field in dataclasses.fields(value):
    v = getattr(value, field.name)
    if isinstance(v, float):
      yield f"{section}.{field.name}", v


def check(run_config) -> None:
  """Raises a one-line ValueError for the first non-finite or out-of-range float."""
  for section in dataclasses.fields(run_config):
    value = getattr(run_config, section.name)
    if not dataclasses.is_dataclass(value):
      continue
    for key, v in _floats(section.name, value):
      if not math.isfinite(v):
        raise ValueError(f"{key}={v} must be a finite number")
      if key in _RANGES and not _RANGES[key][1](v):
        raise ValueError(f"{key}={v} must be {_RANGES[key][0]}")
