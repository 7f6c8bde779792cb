"""Splits the one ConfigDict of a run into frozen typed pieces, once.

The keys, their base values and their meanings are declared once, in configs/base.py; a
config with a key missing or added is an error here, and the dataclasses have no defaults.
"""
import dataclasses
import json
import pathlib
from typing import Any

import ml_collections

from treadle.configs import base
from treadle.configs import keys
from treadle.data import images
from treadle.data import post
from treadle.data import text
from treadle.model import classifier
from treadle.model import gpt

# The only keys a resumed run may change: those declared with resume=True in configs/base.py.
RESUMABLE_KEYS = base.resumable()
OPTIMIZERS = base.declared("lm")["optimizer.name"].check.choices


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """optimizer.*: keys, base values and meanings in configs/base.py."""
  name: str
  learning_rate: float
  min_learning_rate: float
  warmup_steps: int
  decay_steps: int
  beta1: float
  beta2: float
  weight_decay: float
  grad_clip_norm: float
  muon_learning_rate: float
  muon_momentum: float

  def __post_init__(self):
    base.check_fields("optimizer", "lm", self)  # each key's own range: configs/base.py


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """train.*: keys, base values and meanings in configs/base.py."""
  num_steps: int
  batch_size: int
  grad_accum_steps: int
  seed: int
  log_every: int
  eval_every: int
  eval_batches: int
  checkpoint_every: int
  keep_checkpoints: int
  keep_best: bool
  early_stopping_patience: int
  early_stopping_min_delta: float
  target_val_loss: float
  max_nonfinite_steps: int
  init_from: str
  matmul_precision: str
  profile_steps: str
  wandb_project: str

  def __post_init__(self):
    base.check_fields("train", "lm", self)  # each key's own range: configs/base.py
    if self.batch_size % self.grad_accum_steps:
      raise ValueError(f"train.batch_size={self.batch_size} is not divisible by "
                       f"train.grad_accum_steps={self.grad_accum_steps}")
    self.profile_window  # validates the "START:STOP" form

  @property
  def profile_window(self) -> tuple[int, int] | None:
    """train.profile_steps as (first step traced, first step not traced); None = off."""
    if not self.profile_steps:
      return None
    start, sep, stop = self.profile_steps.partition(":")
    if not (sep and start.isdigit() and stop.isdigit() and 0 < int(start) < int(stop)):
      raise ValueError(f"train.profile_steps={self.profile_steps!r}: use \"START:STOP\" with "
                       "0 < START < STOP (steps START..STOP-1 are traced), or \"\" for off")
    return int(start), int(stop)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """finetune.*, LoRA: frozen base parameters (from train.init_from), trainable low-rank
  adapters. Keys, base values and meanings in configs/base.py."""
  lora_rank: int
  lora_alpha: float
  lora_targets: str

  def __post_init__(self):
    base.check_fields("finetune", "lm", self)  # each key's own range: configs/base.py


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """mesh.*: keys, base values and meanings in configs/base.py."""
  data: int
  fsdp: int
  tensor: int
  expert: int
  rules: str
  cpu_devices: int

  def __post_init__(self):
    base.check_fields("mesh", "lm", self)  # each key's own range: configs/base.py

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (self.data, self.fsdp, self.tensor, self.expert)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """eval.* (task=lm): keys, base values and meanings in configs/base.py."""
  tasks: str

  def __post_init__(self):
    base.check_fields("eval", "lm", self)


@dataclasses.dataclass(frozen=True)
class DpoConfig:
  """dpo.* (task=dpo): keys, base values and meanings in configs/base.py."""
  beta: float

  def __post_init__(self):
    base.check_fields("dpo", "dpo", self)


@dataclasses.dataclass(frozen=True)
class RlConfig:
  """rl.* (task=grpo): keys, base values and meanings in configs/base.py."""
  prompts: str
  reward: str
  group_size: int
  max_new_tokens: int
  temperature: float
  clip_eps: float
  kl_coef: float

  def __post_init__(self):
    base.check_fields("rl", "grpo", self)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  task: str    # configs/base.TASKS: lm | classify | sft | dpo | grpo
  model: Any   # the task's model config (gpt.ModelConfig, classifier.ClassifierConfig)
  data: Any    # the task's data config (text.DataConfig, images.DataConfig, data/post.py's)
  optimizer: OptimizerConfig
  train: TrainConfig
  mesh: MeshConfig
  finetune: FinetuneConfig
  # sections of some tasks only (configs/base.SECTIONS); None in the other tasks' configs
  eval: EvalConfig | None = None
  dpo: DpoConfig | None = None
  rl: RlConfig | None = None

  def to_dict(self) -> dict[str, Any]:
    """The config as written to DIR/config.json: the sections and keys of configs/base.py
    (the decoder's lora_* fields are derived from the finetune section, not saved twice)."""
    d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
    for name in _DERIVED_MODEL_FIELDS:
      d["model"].pop(name, None)
    return d


# gpt.ModelConfig fields filled from the finetune section (not model-section keys)
_DERIVED_MODEL_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")
_SECTION_TYPES = {"lm": (gpt.ModelConfig, text.DataConfig),
                  "classify": (classifier.ClassifierConfig, images.DataConfig),
                  "sft": (gpt.ModelConfig, post.SftDataConfig),
                  "dpo": (gpt.ModelConfig, post.DpoDataConfig),
                  "grpo": (gpt.ModelConfig, post.GrpoDataConfig)}
_TASK_SECTIONS = {"eval": EvalConfig, "dpo": DpoConfig, "rl": RlConfig}  # of some tasks


def _build(cls, section: str, values: dict):
  try:
    return cls(**values)
  except TypeError as e:
    raise ValueError(f"config.{section}: {e}") from None


def _check_keys(d: dict) -> None:
  """Every key of configs/base.py for the task, and no other (one-line ValueError)."""
  task = d.get("task")
  if task not in base.TASKS:
    raise ValueError(f"task={task!r} is not one of {list(base.TASKS)}")
  declared = set(_flatten(base.get_config(task).to_dict()))
  given = set(_flatten(d))
  for problem, keys in (("missing", declared - given), ("unknown", given - declared)):
    if keys:
      raise ValueError(f"config: {problem} key{'s' if len(keys) > 1 else ''} "
                       f"{', '.join(sorted(keys))} (every key is declared in configs/base.py)")


def split(cfg: ml_collections.ConfigDict | dict) -> RunConfig:
  """One ConfigDict -> frozen dataclasses; missing or unknown keys and bad values raise
  ValueError. Each value is checked against its declaration in configs/base.py (type, finite,
  range or choices) before any dataclass, so the cross-key checks there see sane values."""
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  _check_keys(d)
  if problem := keys.first_problem(base.declared(d["task"]), _flatten(d)):
    raise ValueError(problem)
  model_type, data_type = _SECTION_TYPES[d["task"]]
  finetune = _build(FinetuneConfig, "finetune", d["finetune"])
  train = _build(TrainConfig, "train", d["train"])
  run = RunConfig(
      task=d["task"],
      model=_model(model_type, d["model"], finetune, d["task"], train),
      data=_build(data_type, "data", d["data"]),
      optimizer=_build(OptimizerConfig, "optimizer", d["optimizer"]),
      train=train,
      mesh=_build(MeshConfig, "mesh", d["mesh"]),
      finetune=finetune,
      **{name: _build(cls, name, d[name]) for name, cls in _TASK_SECTIONS.items() if name in d},
  )
  return run


def _model(model_type, values: dict, finetune: FinetuneConfig, task: str, train: TrainConfig):
  """The model config; the decoder's carries the adapters' shape (finetune.* is the one place
  to set it)."""
  if task not in base.DECODER_TASKS:
    if finetune.lora_rank:
      raise ValueError(f"finetune.lora_rank is only supported for decoder tasks "
                       f"{list(base.DECODER_TASKS)} (task={task!r})")
    return _build(model_type, "model", values)
  if finetune.lora_rank and not train.init_from:
    raise ValueError("finetune.lora_rank needs train.init_from: LoRA adapts a trained model")
  return _build(model_type, "model", {
      **values, "lora_rank": finetune.lora_rank, "lora_alpha": finetune.lora_alpha,
      "lora_targets": finetune.lora_targets})


def section(name: str, task: str = "lm", /, **overrides):
  """One typed section (model, data, optimizer, train, mesh, finetune) from configs/base.py
  with `overrides`: the pieces tests, benchmarks and notebooks build without a whole run."""
  cfg = base.get_config(task).to_dict()
  cfg[name] = {**cfg[name], **overrides}
  return getattr(split(cfg), name)


def from_run(workdir) -> RunConfig:
  """The config of the run directory `workdir`; FileNotFoundError (one line) if it is not one."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{str(workdir)!r} is not a treadle run directory (no config.json)")
  return from_json(path)


def from_json(path) -> RunConfig:
  """The config a run directory was written with; a damaged one is a one-line error naming
  the file. Keys added to configs/base.py after the run was written take their base value
  (the behaviour before they existed)."""
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise ValueError("not a JSON object")
    base_cfg = (base.get_config(saved.get("task")).to_dict() if saved.get("task") in base.TASKS
                else {})
    for name in _DERIVED_MODEL_FIELDS:  # written into the model section before 2026-12
      saved.get("model", {}).pop(name, None)
    for name, section_values in base_cfg.items():
      if isinstance(section_values, dict):
        saved[name] = {**section_values, **saved.get(name, {})}
    return split(saved)
  except (ValueError, TypeError, KeyError, AttributeError) as e:  # JSONDecodeError is a ValueError
    raise ValueError(f"{str(path)!r} is not a valid treadle config.json: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def differences(old: RunConfig, new: RunConfig) -> tuple[list[str], list[str]]:
  """(refused keys, allowed keys) that differ between a saved run and a new invocation."""
  a, b = _flatten(old.to_dict()), _flatten(new.to_dict())
  changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
  return ([k for k in changed if k not in RESUMABLE_KEYS],
          [k for k in changed if k in RESUMABLE_KEYS])
