"""Splits the one ConfigDict of a run into frozen typed pieces, once."""
import dataclasses
import json
from typing import Any

import ml_collections

from treadle.data import text
from treadle.model import gpt

# Keys whose change makes an existing run directory incompatible (shapes, data, tokens,
# optimizer state layout).
INCOMPATIBLE_PREFIXES = ("task", "model.", "data.", "optimizer.name")
# Keys safe to change on resume (more steps, logging/eval/checkpoint cadence, ...).
SAFE_KEYS = {"data.cache_dir", "data.prepare_workers"}
OPTIMIZERS = ("adamw", "lion", "muon")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adamw"           # adamw | lion | muon (Muon on hidden matrices, AdamW on the rest)
  learning_rate: float = 1e-3
  min_learning_rate: float = 1e-4
  warmup_steps: int = 100
  decay_steps: int = 0          # 0 = train.num_steps
  beta1: float = 0.9
  beta2: float = 0.99
  weight_decay: float = 0.1
  grad_clip_norm: float = 1.0
  muon_learning_rate: float = 0.02  # muon: peak lr of the Muon matrices (same schedule shape)
  muon_momentum: float = 0.95       # muon: Nesterov momentum of the Muon matrices

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"optimizer.name={self.name!r} is not one of {list(OPTIMIZERS)}")
    if self.learning_rate <= 0 or self.muon_learning_rate <= 0:
      raise ValueError(f"optimizer.learning_rate={self.learning_rate} and optimizer."
                       f"muon_learning_rate={self.muon_learning_rate} must be positive")
    if not 0 <= self.muon_momentum < 1:
      raise ValueError(f"optimizer.muon_momentum={self.muon_momentum} must be in [0, 1)")
    if self.warmup_steps < 0 or self.decay_steps < 0:
      raise ValueError("optimizer.warmup_steps and optimizer.decay_steps must be >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  num_steps: int = 2000
  batch_size: int = 12
  grad_accum_steps: int = 1
  seed: int = 0
  log_every: int = 10
  eval_every: int = 250
  eval_batches: int = 20
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  keep_best: bool = True
  early_stopping_patience: int = 0   # evaluations without improvement; 0 = off
  early_stopping_min_delta: float = 0.0  # smaller val-loss improvements don't reset patience
  target_val_loss: float = 0.0       # stop at the first evaluation at or below it; 0 = off
  max_nonfinite_steps: int = 0       # non-finite steps skipped before stopping
  init_from: str = ""
  matmul_precision: str = "default"

  def __post_init__(self):
    for name in ("num_steps", "batch_size", "grad_accum_steps", "log_every", "eval_every",
                 "checkpoint_every", "keep_checkpoints"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name}={getattr(self, name)} must be positive")
    if self.eval_batches < 0:
      raise ValueError(f"train.eval_batches={self.eval_batches} must be >= 0 (0 = whole split)")
    if self.batch_size % self.grad_accum_steps:
      raise ValueError(f"train.batch_size={self.batch_size} is not divisible by "
                       f"train.grad_accum_steps={self.grad_accum_steps}")
    if self.matmul_precision not in ("default", "high", "highest"):
      raise ValueError(f"train.matmul_precision={self.matmul_precision!r} is not one of "
                       "['default', 'high', 'highest']")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """LoRA: frozen base parameters (from train.init_from), trainable low-rank adapters."""
  lora_rank: int = 0          # 0 = full fine-tuning (or training from scratch)
  lora_alpha: float = 16.0    # adapter output scaled by lora_alpha / lora_rank
  lora_targets: str = "attn"  # comma-separated: attn, mlp, or weights qkv,q,kv,out,fc,proj

  def __post_init__(self):
    if self.lora_rank < 0:
      raise ValueError(f"finetune.lora_rank={self.lora_rank} must be >= 0 (0 = off)")
    if self.lora_alpha <= 0:
      raise ValueError(f"finetune.lora_alpha={self.lora_alpha} must be positive")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  rules: str = "dp"
  cpu_devices: int = 0   # simulated CPU devices on a CPU-only host; 0 = one per core

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  task: str    # "lm" (language modelling) | "classify" (image classification)
  model: Any   # the task's model config (gpt.ModelConfig, classifier.ClassifierConfig)
  data: Any    # the task's data config (text.DataConfig, images.DataConfig)
  optimizer: OptimizerConfig
  train: TrainConfig
  mesh: MeshConfig
  finetune: FinetuneConfig = FinetuneConfig()

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _section_types(task: str):
  """(model config class, data config class) of a task."""
  if task == "lm":
    return gpt.ModelConfig, text.DataConfig
  if task == "classify":
    from treadle.data import images  # local: only image runs need the image stack
    from treadle.model import classifier
    return classifier.ClassifierConfig, images.DataConfig
  raise ValueError(f"task={task!r} is not one of ['classify', 'lm']")


def _build(cls, section: str, values: dict):
  try:
    return cls(**values)
  except TypeError as e:
    raise ValueError(f"config.{section}: {e}") from None


def split(cfg: ml_collections.ConfigDict | dict) -> RunConfig:
  """One ConfigDict -> frozen dataclasses; unknown keys and bad values raise ValueError."""
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  expected = {f.name for f in dataclasses.fields(RunConfig)}
  if set(d) != expected:
    raise ValueError(f"config sections {sorted(d)} != expected {sorted(expected)}")
  model_type, data_type = _section_types(d["task"])
  finetune = _build(FinetuneConfig, "finetune", d["finetune"])
  train = _build(TrainConfig, "train", d["train"])
  return RunConfig(
      task=d["task"],
      model=_with_lora(_build(model_type, "model", d["model"]), finetune, d["task"], train),
      data=_build(data_type, "data", d["data"]),
      optimizer=_build(OptimizerConfig, "optimizer", d["optimizer"]),
      train=train,
      mesh=_build(MeshConfig, "mesh", d["mesh"]),
      finetune=finetune,
  )


def _with_lora(model, finetune: FinetuneConfig, task: str, train: TrainConfig):
  """The LM model config carries the adapters' shape (finetune.* is the one place to set it)."""
  if task != "lm":
    if finetune.lora_rank:
      raise ValueError(f"finetune.lora_rank is only supported for task=lm (task={task!r})")
    return model
  if finetune.lora_rank and not train.init_from:
    raise ValueError("finetune.lora_rank needs train.init_from: LoRA adapts a trained model")
  return _build(type(model), "finetune", {
      **dataclasses.asdict(model), "lora_rank": finetune.lora_rank,
      "lora_alpha": finetune.lora_alpha, "lora_targets": finetune.lora_targets})


def from_json(path) -> RunConfig:
  with open(path) as f:
    saved = json.load(f)
  saved.setdefault("finetune", {})  # run directories written before the section existed
  return split(saved)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def differences(old: RunConfig, new: RunConfig) -> tuple[list[str], list[str]]:
  """(incompatible keys, safe keys) that differ between a saved run and a new invocation."""
  a, b = _flatten(old.to_dict()), _flatten(new.to_dict())
  changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
  bad = [k for k in changed if k.startswith(INCOMPATIBLE_PREFIXES) and k not in SAFE_KEYS]
  return bad, [k for k in changed if k not in bad]
