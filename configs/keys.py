"""What a config key is: its base value, its meaning, the values it allows and whether a resumed
run may change it. configs/base.py declares every key once with `Key`; the checks, the keys a
resume may change and the reference docs/config-keys.md are all derived from those declarations.
"""
import dataclasses
import math
import numbers
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Check:
  """Allowed values: `words` for errors and the reference, `test` to apply."""
  words: str
  test: Callable[[Any], bool]
  refusal: str = "must be"  # the error reads "KEY=VALUE {refusal} {words}"
  choices: tuple = ()       # one_of's, for the code that dispatches on them


POSITIVE = Check("> 0", lambda v: v > 0)
NON_NEGATIVE = Check(">= 0", lambda v: v >= 0)
BELOW_ONE = Check("in [0, 1)", lambda v: 0 <= v < 1)        # probabilities, Adam betas
HELD_OUT = Check("in (0, 0.5)", lambda v: 0 < v < 0.5)      # val / test fractions


def one_of(*choices: str) -> Check:
  return Check(f"one of {list(choices)}", lambda v: v in choices, "is not", choices)


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key. `check` None: any value of the default's type (structural rules that
  involve other keys, or a string's format, live with the dataclass that uses the key)."""
  name: str
  default: Any
  check: Check | None
  doc: str
  resume: bool = False  # a resumed run may change it (how long/often, where it runs)

  @property
  def kind(self) -> type:
    """The type its values must have: the default's (bool, int, float or str)."""
    return next(k for k in (bool, int, float, str) if isinstance(self.default, k))

  def problem(self, key: str, value: Any) -> str | None:
    """Why `value` is refused for dotted `key`, or None when it is allowed."""
    kind = self.kind
    if not _is(kind, value):
      return f"{key}={value!r} must be {_KIND_WORDS[kind]}"
    # NaN passes every comparison (`nan <= 0` is False): a NaN learning rate used to start
    # a run that could only diverge
    if kind is float and not math.isfinite(value):
      return f"{key}={value!r} must be a finite number"
    if self.check and not self.check.test(value):
      return f"{key}={value!r} {self.check.refusal} {self.check.words}"
    return None


_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _is(kind: type, value: Any) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind is float:  # an integer is a fine float (--config.optimizer.beta1=0 ...)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  return isinstance(value, kind)


def first_problem(declared: dict[str, Key], flat: dict[str, Any]) -> str | None:
  """The first refused value of a flattened config ({"model.embed_dim": 0, ...}), in
  declaration order, as a one-line message naming the key; None when all are allowed."""
  for key, decl in declared.items():
    if key in flat and (problem := decl.problem(key, flat[key])):
      return problem
  return None
