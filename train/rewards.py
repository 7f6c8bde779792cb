"""GRPO's reward program: rl.reward = "path/to/file.py:function" or "module:function", called
as function(prompt: str, completion: str, example: dict) -> float.

Loading problems are one-line ValueErrors before anything is written; a reward that raises or
returns something other than a finite number in the middle of a run is a RewardError: the run
stops with exit code 1 and its last checkpoint intact (resuming re-runs the step).
"""
import importlib
import importlib.util
import math
import numbers
import pathlib
import sys
from typing import Callable


class _NotFound(ValueError):
  """rl.reward names a file or module that does not exist."""


class RewardError(RuntimeError):
  """The reward function failed on a sampled completion."""
  exit_code = 1


def load(spec: str) -> Callable:
  """The function rl.reward names; ValueError (one line) when it cannot be found."""
  key = f"rl.reward={spec!r}"
  if not spec:
    raise ValueError('rl.reward is required: "path/to/file.py:function" or "module:function"')
  target, sep, name = spec.rpartition(":")
  if not (sep and target and name.isidentifier()):
    raise ValueError(f'{key}: use "path/to/file.py:function" or "module:function"')
  try:
    module = _module(target, key)
  except _NotFound:
    raise
  except Exception as e:  # the module's own code failed while importing
    raise ValueError(f"{key}: importing {target!r} raised {type(e).__name__}: "
                     f"{_first_line(e)}") from None
  function = getattr(module, name, None)
  if function is None:
    raise ValueError(f"{key}: {target!r} has no function {name!r}")
  if not callable(function):
    raise ValueError(f"{key}: {name!r} in {target!r} is not a function")
  return function


def _module(target: str, key: str):
  if target.endswith(".py") or "/" in target:
    path = pathlib.Path(target)
    if not path.is_file():
      raise _NotFound(f"{key}: no such file {target!r}")
    name = f"treadle_reward_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module
  try:
    return importlib.import_module(target)
  except ModuleNotFoundError as e:
    if e.name and target.startswith(e.name):
      raise _NotFound(f"{key}: no module {target!r} (nor a file: give a path ending in "
                      ".py)") from None
    raise


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else ""


def score(function: Callable, spec: str, prompt: str, completion: str, example: dict,
          where: str) -> float:
  """The reward of one completion as a float; RewardError naming `spec` and `where`."""
  try:
    value = function(prompt, completion, example)
  except Exception as e:  # the user's code: any failure stops the run, named
    raise RewardError(f"rl.reward={spec!r} raised {type(e).__name__}: {_first_line(e)} "
                      f"(on {where})") from None
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise RewardError(f"rl.reward={spec!r} returned {value!r} ({type(value).__name__}), not a "
                      f"finite number (on {where})")
  return float(value)
