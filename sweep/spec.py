"""Sweep files: a base config, fixed overrides and axes, expanded into named trials.

A sweep file is Python with `get_sweep() -> spec.Sweep`:

  from treadle.sweep import spec

  def get_sweep() -> spec.Sweep:
    return spec.Sweep(
        name="lr_width",
        base_config="configs/shakespeare_char_cpu.py",
        fixed={"train.num_steps": 600},
        axes=[spec.Grid({"optimizer.learning_rate": [3e-4, 1e-3], "model.embed_dim": [64, 128]})],
        seeds=[0, 1])

Axes blocks (Grid: every combination; Zip: equal-length lists taken together;
Random: n distinct draws from a seeded generator) are combined with each other and with
`seeds` (-> train.seed) as a Cartesian product. Every key is checked against the base
config before anything runs.
"""
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import pathlib
import re
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np

SEED_KEY = "train.seed"
METRICS = ("best_val_loss", "final_val_loss", "test_loss")
MAX_NAME_LENGTH = 96
# short labels for long leaf names in trial names; anything else uses its leaf name
_LABELS = {"learning_rate": "lr", "min_learning_rate": "min_lr", "weight_decay": "wd"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class SweepError(ValueError):
  """A sweep that cannot be expanded; reported as one line before anything runs."""


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `values`, uniformly."""
  values: Sequence[Any]

  def sample(self, rng: np.random.Generator) -> Any:
    return _plain(self.values[int(rng.integers(len(self.values)))])

  def examples(self) -> list[Any]:
    return list(self.values)


@dataclasses.dataclass(frozen=True)
class Uniform:
  """Uniform in [low, high), rounded to `digits` significant digits (readable names)."""
  low: float
  high: float
  digits: int = 3

  def sample(self, rng: np.random.Generator) -> float:
    return _round(rng.uniform(self.low, self.high), self.digits)

  def examples(self) -> list[Any]:
    if not self.low < self.high:
      raise SweepError(f"Uniform({self.low}, {self.high}): low must be < high")
    return [self.low, self.high]


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """Log-uniform in [low, high) (learning rates), rounded to `digits` significant digits."""
  low: float
  high: float
  digits: int = 3

  def sample(self, rng: np.random.Generator) -> float:
    return _round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))), self.digits)

  def examples(self) -> list[Any]:
    if not 0 < self.low < self.high:
      raise SweepError(f"LogUniform({self.low}, {self.high}): need 0 < low < high")
    return [self.low, self.high]


@dataclasses.dataclass(frozen=True)
class Grid:
  """Every combination of the listed values."""
  values: dict[str, Sequence[Any]]

  def points(self) -> list[dict[str, Any]]:
    keys = list(self.values)
    for key in keys:
      if not len(self.values[key]):
        raise SweepError(f"Grid: {key} has no values")
    return [dict(zip(keys, map(_plain, combo)))
            for combo in itertools.product(*(self.values[k] for k in keys))]

  def examples(self) -> dict[str, list[Any]]:
    return {k: list(v) for k, v in self.values.items()}


@dataclasses.dataclass(frozen=True)
class Zip:
  """The i-th values of every list together (lists of equal length)."""
  values: dict[str, Sequence[Any]]

  def points(self) -> list[dict[str, Any]]:
    lengths = {k: len(v) for k, v in self.values.items()}
    if len(set(lengths.values())) > 1:
      raise SweepError(f"Zip: lists of different lengths {lengths}")
    keys = list(self.values)
    return [dict(zip(keys, map(_plain, combo)))
            for combo in zip(*(self.values[k] for k in keys))]

  def examples(self) -> dict[str, list[Any]]:
    return {k: list(v) for k, v in self.values.items()}


@dataclasses.dataclass(frozen=True)
class Random:
  """`n` distinct points drawn from `params` (key -> Choice/Uniform/LogUniform) with `seed`."""
  n: int
  seed: int
  params: dict[str, Choice | Uniform | LogUniform]

  def points(self) -> list[dict[str, Any]]:
    rng = np.random.default_rng(self.seed)
    points, seen = [], set()
    for _ in range(100 * self.n):  # redraw duplicates: a search space of choices can repeat
      point = {k: dist.sample(rng) for k, dist in self.params.items()}
      if _canonical(point) not in seen:
        seen.add(_canonical(point))
        points.append(point)
      if len(points) == self.n:
        return points
    raise SweepError(f"Random: only {len(points)} distinct points in the space, {self.n} asked")

  def examples(self) -> dict[str, list[Any]]:
    return {k: dist.examples() for k, dist in self.params.items()}


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep file's content; see the module docstring."""
  name: str
  base_config: str                      # a config file, relative to the working directory
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
  axes: Sequence[Grid | Zip | Random] = ()
  seeds: Sequence[int] = ()             # -> train.seed; empty = the base config's seed
  metric: str = "best_val_loss"         # what the report ranks and plots: one of METRICS


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run of the sweep."""
  index: int
  name: str                    # derived from `swept`; the workdir's name
  overrides: dict[str, Any]    # fixed + swept, in command-line order
  swept: dict[str, Any]        # the keys that vary across trials (axes, then train.seed)


def load(path: str | pathlib.Path) -> Sweep:
  """Imports a sweep file and calls its get_sweep()."""
  module = _import_file(path, "get_sweep")
  try:
    sweep = module.get_sweep()
  except Exception as e:  # the user's code: reported as one line
    raise SweepError(f"{path}: get_sweep(): {type(e).__name__}: {e}") from None
  if not isinstance(sweep, Sweep):
    raise SweepError(f"{path}: get_sweep() returned {type(sweep).__name__}, not spec.Sweep")
  return sweep


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The base config, as treadle-train would load it (get_config() of the file)."""
  module = _import_file(path, "get_config")
  try:
    return module.get_config()
  except Exception as e:
    raise SweepError(f"{path}: get_config(): {type(e).__name__}: {e}") from None


def _import_file(path, function: str):
  path = pathlib.Path(path)
  if not path.is_file():
    raise SweepError(f"no such file: {path}")
  module_spec = importlib.util.spec_from_file_location(f"_treadle_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_spec.name] = module  # dataclasses in the file look their module up
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # the user's file: any error is reported as one line
    raise SweepError(f"{path}: {type(e).__name__}: {e}") from None
  if not callable(getattr(module, function, None)):
    raise SweepError(f"{path} defines no {function}()")
  return module


def expand(sweep: Sweep) -> list[Trial]:
  """Validates the sweep against its base config; returns its trials in a fixed order."""
  validate(sweep)
  blocks = [block.points() for block in sweep.axes]
  if sweep.seeds:
    blocks.append([{SEED_KEY: int(s)} for s in sweep.seeds])
  points = [_merge(combo) for combo in itertools.product(*blocks)]
  short = labels(list(points[0]))
  trials = [Trial(i, trial_name(point, short), {**sweep.fixed, **point}, point)
            for i, point in enumerate(points)]
  names = [t.name for t in trials]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise SweepError(f"sweep {sweep.name!r}: repeated trials {repeated} (duplicate values?)")
  return trials


def validate(sweep: Sweep) -> None:
  """Name, metric, and every key and value against the base config; raises SweepError."""
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", sweep.name or ""):
    raise SweepError(f"sweep name {sweep.name!r}: use letters, digits, '.', '_' or '-'")
  if sweep.metric not in METRICS:
    raise SweepError(f"metric {sweep.metric!r} is not one of {list(METRICS)}")
  values: dict[str, list[Any]] = {k: [v] for k, v in sweep.fixed.items()}
  for block in sweep.axes:
    if not isinstance(block, (Grid, Zip, Random)):
      raise SweepError(f"axes: {block!r} is not a Grid, Zip or Random")
    for key, examples in block.examples().items():
      if key in values:
        raise SweepError(f"{key} is set twice (fixed and/or in several axes)")
      values[key] = examples
  if sweep.seeds:
    if SEED_KEY in values:
      raise SweepError(f"{SEED_KEY} is set by `seeds` and elsewhere")
    values[SEED_KEY] = list(sweep.seeds)
  config = load_config(sweep.base_config)
  for key, examples in values.items():
    for value in examples:
      check_override(config, key, value)


def check_override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """The key exists in the config and the value has its type (ml_collections decides)."""
  node = config
  *parents, leaf = key.split(".")
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise SweepError(f"unknown config key {key!r}")
    node = node[part]
  if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
    raise SweepError(f"unknown config key {key!r}")
  try:
    node[leaf] = value  # a throwaway copy: ml_collections enforces the declared type
  except (TypeError, ValueError) as e:
    raise SweepError(f"{key}={value!r}: {e}") from None


def format_value(value: Any) -> str:
  """How a value appears on the command line and in names (floats: shortest exact repr)."""
  return repr(value) if isinstance(value, float) else str(value)


def trial_name(swept: dict[str, Any], label_of: dict[str, str]) -> str:
  """lr0.001_embed_dim64_seed0; a hash suffix when shortened or made filesystem-safe."""
  raw = "_".join(f"{label_of[k]}{format_value(v)}" for k, v in swept.items()) or "base"
  name = _UNSAFE.sub("-", raw)
  if name != raw or len(name) > MAX_NAME_LENGTH:
    digest = hashlib.sha1(_canonical(swept).encode()).hexdigest()[:8]
    name = f"{name[:MAX_NAME_LENGTH - 9]}_{digest}"
  return name


def labels(keys: list[str]) -> dict[str, str]:
  """Leaf names (or short aliases); the full key where two leaves would clash."""
  short = {k: _LABELS.get(k.split(".")[-1], k.split(".")[-1]) for k in keys}
  clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
  return {k: (k.replace(".", "-") if s in clashes else s) for k, s in short.items()}


def _merge(dicts: Sequence[dict]) -> dict:
  out = {}
  for d in dicts:
    out.update(d)
  return out


def _plain(value: Any) -> Any:
  """numpy scalars -> Python values (ml_collections and JSON want the builtins)."""
  return value.item() if isinstance(value, np.generic) else value


def _round(x: float, digits: int) -> float:
  return float(f"{float(x):.{digits}g}")


def _canonical(point: dict[str, Any]) -> str:
  return json.dumps(point, sort_keys=True)
