"""Typed reads of the values in a Hugging Face JSON file (config.json, tokenizer_config.json).

A value of the wrong type, out of its bounds, or missing is a one-line HfFormatError naming
the file and the key, never a TypeError/KeyError from deep inside the importer. JSON `null`
reads as absent (HF writes `"head_dim": null` for "derive it"). Types are compared as well
as values: `true` is not the integer 1 (Python's bool is an int), `1.0` is not `1`.
"""
import math
from typing import Any

REQUIRED = object()  # a `default` that makes the key required

# Generous ceilings on sizes, so a typo (10**9 layers) is refused before anything loops or
# allocates over it; the largest public models are far below (Llama 3.1 405B: 126 layers,
# 16384 wide, 53248 MLP, 128k positions; vocabularies up to 256k).
MAX_LAYERS = 1024
MAX_DIM = 2**20
MAX_VOCAB = 2**24
MAX_POSITIONS = 2**24


class HfFormatError(ValueError):
  """A Hugging Face directory or run that cannot be converted; the message is one line."""


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "a JSON object", list: "a list"}


def shown(value: Any, limit: int = 60) -> str:
  """A value for a one-line message: its repr, cut short."""
  text = repr(value).replace("\n", " ")
  return text if len(text) <= limit else text[:limit - 3] + "..."


def kind(value: Any) -> str:
  return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class Fields:
  """A JSON object read key by key; `source` names it in errors ("config.json"), `prefix`
  the enclosing key of a nested object ("rope_scaling.")."""

  def __init__(self, body: Any, source: str, prefix: str = ""):
    if not isinstance(body, dict):
      name = f"{source}: {prefix[:-1]}" if prefix else source
      raise HfFormatError(f"{name} must be a JSON object, got {shown(body)}")
    self.body, self.source, self.prefix = body, source, prefix

  def error(self, key: str, message: str) -> HfFormatError:
    """`message` follows the key directly: " is missing", "=5 is out of range"."""
    return HfFormatError(f"{self.source}: {self.prefix}{key}{message}")

  def _get(self, key: str, default: Any) -> Any:
    value = self.body.get(key)
    if value is None and default is REQUIRED:
      raise self.error(key, " is missing")
    return value

  def _wrong(self, key: str, what: str, value: Any) -> HfFormatError:
    return self.error(key, f" must be {what}, got {shown(value)}")

  def integer(self, key: str, lo: int, hi: int, default: Any = REQUIRED) -> Any:
    value = self._get(key, default)
    if value is None:
      return default
    if not _is_int(value):
      raise self._wrong(key, "an integer", value)
    if not lo <= value <= hi:
      raise self.error(key, f"={value} is out of range [{lo}, {hi}]")
    return value

  def number(self, key: str, above: float, at_most: float, default: Any = REQUIRED) -> Any:
    """A finite int or float in (above, at_most], as float."""
    value = self._get(key, default)
    if value is None:
      return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise self._wrong(key, "a finite number", value)
    if not above < value <= at_most:
      raise self.error(key, f"={value} is out of range (must be > {above} and <= {at_most})")
    return float(value)

  def string(self, key: str, default: Any = REQUIRED) -> Any:
    value = self._get(key, default)
    if value is None:
      return default
    if not isinstance(value, str):
      raise self._wrong(key, "a string", value)
    return value

  def boolean(self, key: str, default: Any = REQUIRED) -> Any:
    value = self._get(key, default)
    if value is None:
      return default
    if not isinstance(value, bool):
      raise self._wrong(key, "true or false", value)
    return value

  def choice(self, key: str, allowed: tuple, default: Any = REQUIRED) -> Any:
    """One of `allowed`, equal in type as well as value (1.0 and true are not 1)."""
    value = self._get(key, default)
    if value is None:
      value = default
    if not any(type(value) is type(a) for a in allowed):
      raise self._wrong(key, kind(allowed[0]), value)
    if not any(type(value) is type(a) and value == a for a in allowed):
      raise self.error(key, f"={value!r} has no treadle equivalent "
                       f"(supported: {list(allowed)})")
    return value

  def strings(self, key: str, default: Any = REQUIRED) -> Any:
    """A list of strings."""
    value = self._get(key, default)
    if value is None:
      return default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
      raise self._wrong(key, "a list of strings", value)
    return value

  def integers(self, key: str, default: Any = REQUIRED) -> Any:
    """A list of integers."""
    value = self._get(key, default)
    if value is None:
      return default
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
      raise self._wrong(key, "a list of integers", value)
    return value

  def mapping(self, key: str) -> "Fields | None":
    """A nested JSON object as Fields (errors name `key.inner`); None when absent or null."""
    value = self.body.get(key)
    if value is None:
      return None
    if not isinstance(value, dict):
      raise self._wrong(key, "a JSON object", value)
    return Fields(value, self.source, f"{self.prefix}{key}.")

  def token_ids(self, key: str, vocab_size: int, many: bool = False) -> Any:
    """A token id in [0, vocab_size), or with `many` also a list of them (eos_token_id);
    None when absent."""
    value = self._get(key, None)
    tokens = value if many and isinstance(value, list) else [value]
    if value is None:
      return None
    if not all(_is_int(t) for t in tokens):
      raise self._wrong(key, "a token id (an integer)" + (" or a list of them" if many else ""),
                        value)
    if not all(0 <= t < vocab_size for t in tokens):
      raise self.error(key, f"={shown(value)} is out of range [0, vocab_size={vocab_size})")
    return value
