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
Random: n distinct draws from a seeded generator; IsoFLOP: model shapes and step counts per
compute budget) are combined with each other and with `seeds` (-> train.seed) as a Cartesian
product. Every key is checked against the base config before anything runs.
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
class IsoFLOP:
  """Model shapes and step counts at fixed compute, for `treadle-scaling isoflop` (Chinchilla's
  approach 2). For each budget C (FLOPs) and shape (every width x depth), the train.num_steps
  that spends C = 6 N D: N the non-embedding parameters of the base config with `fixed` and
  the shape, D = steps x train.batch_size x data.seq_len. A budget keeps the shapes that train
  at least min_steps steps (rounding then misses C by under 5%) and within tokens_per_param;
  3 or more (a parabola each)."""
  budgets: Sequence[float]
  widths: Sequence[int]                  # model.embed_dim
  depths: Sequence[int]                  # model.num_layers
  min_steps: int = 20
  tokens_per_param: tuple[float, float] = (1.0, 1000.0)  # D/N: far from Chinchilla's ~20

  KEYS = ("model.embed_dim", "model.num_layers", "train.num_steps")

  def points(self, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """config: the base config with the sweep's fixed overrides."""
    from treadle.sweep import scaling  # noqa: PLC0415 (scipy: only IsoFLOP sweeps need it)
    self._check(scaling.MIN_BUDGET_RATIO)
    sizes = sorted(self._size(config, w, d) + (w, d) for w in self.widths for d in self.depths)
    low, high = self.tokens_per_param
    points = []
    for budget in sorted(self.budgets):
      kept = []
      for params, tokens_per_step, width, depth in sizes:
        steps = round(budget / (6 * params * tokens_per_step))
        if steps >= self.min_steps and low <= steps * tokens_per_step / params <= high:
          kept.append(dict(zip(self.KEYS, (width, depth, steps))))
      if len(kept) < 3:
        raise SweepError(f"IsoFLOP: budget {budget:.3g} keeps {len(kept)} shape(s), a parabola "
                         f"needs 3 (>= {self.min_steps} steps, tokens/param in "
                         f"{list(self.tokens_per_param)}): change the widths, depths or budget")
      points += kept
    return points

  def _check(self, min_ratio: float) -> None:
    budgets = sorted(self.budgets)
    if not budgets or not all(math.isfinite(b) and b > 0 for b in budgets):
      raise SweepError(f"IsoFLOP: budgets {list(self.budgets)} must be positive FLOP counts")
    if any(b2 < min_ratio * b1 for b1, b2 in zip(budgets, budgets[1:])):
      raise SweepError(f"IsoFLOP: budgets {budgets} must be >= {min_ratio}x apart "
                       "(treadle-scaling isoflop tells them apart by 6ND)")
    if self.min_steps < 10:
      raise SweepError(f"IsoFLOP: min_steps={self.min_steps}: >= 10, or rounding the steps "
                       "misses the budget by over 5%")

  @staticmethod
  def _size(config: ml_collections.ConfigDict, width: int, depth: int) -> tuple[int, int]:
    """(N, tokens per step) of the config with this shape."""
    from treadle.sweep import scaling_data  # noqa: PLC0415 (imports jax)
    from treadle.train import config as config_lib  # noqa: PLC0415
    shaped = config.copy_and_resolve_references()
    shaped.model.embed_dim, shaped.model.num_layers = width, depth
    try:
      return scaling_data.size(config_lib.split(shaped), f"IsoFLOP {width}x{depth}")
    except ValueError as e:
      raise SweepError(f"IsoFLOP: width {width}, depth {depth}: {e}") from None

  def examples(self) -> dict[str, list[Any]]:
    return dict(zip(self.KEYS, (list(self.widths), list(self.depths), [self.min_steps])))


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep file's content; see the module docstring."""
  name: str
  base_config: str                      # a config file, relative to the working directory
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
  axes: Sequence[Grid | Zip | Random | IsoFLOP] = ()
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
  blocks = [block.points() if not isinstance(block, IsoFLOP) else block.points(_fixed(sweep))
            for block in sweep.axes]
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
    if not isinstance(block, (Grid, Zip, Random, IsoFLOP)):
      raise SweepError(f"axes: {block!r} is not a Grid, Zip, Random or IsoFLOP")
    for key, examples in block.examples().items():
      if key in values:
        raise SweepError(f"{key} is set twice (fixed and/or in several axes)")
      values[key] = examples
  if sweep.seeds:
    if SEED_KEY in values:
      raise SweepError(f"{SEED_KEY} is set by `seeds` and elsewhere")
    values[SEED_KEY] = list(sweep.seeds)
  _check_isoflop(sweep)
  config = load_config(sweep.base_config)
  for key, examples in values.items():
    for value in examples:
      check_override(config, key, value)


def _check_isoflop(sweep: Sweep) -> None:
  """One IsoFLOP block at most, and no other block changing N or D (its steps assume them)."""
  count = sum(isinstance(b, IsoFLOP) for b in sweep.axes)
  if count > 1:
    raise SweepError("axes: more than one IsoFLOP block")
  others = [b for b in sweep.axes if not isinstance(b, IsoFLOP)] if count else []
  for key in (key for block in others for key in block.examples()):
    if key.startswith("model.") or key in ("train.batch_size", "data.seq_len"):
      raise SweepError(f"{key} varies N or D under IsoFLOP's step counts: set it in fixed")


def _fixed(sweep: Sweep) -> ml_collections.ConfigDict:
  config = load_config(sweep.base_config)
  for key, value in sweep.fixed.items():
    check_override(config, key, value)  # sets it
  return config


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
