"""Character and byte tokenizers, saved to and loaded from the run directory as JSON."""
import json
import os
import pathlib
from typing import Protocol

import numpy as np

FILENAME = "tokenizer.json"


class Tokenizer(Protocol):
  kind: str
  vocab_size: int

  def encode(self, text: str) -> np.ndarray: ...
  def decode(self, ids) -> str: ...
  def to_json(self) -> dict: ...


class UnknownCharacterError(ValueError):
  """Raised when text holds characters outside the tokenizer's vocabulary."""


class CharTokenizer:
  """One id per distinct character of the corpus (nanoGPT's shakespeare_char)."""
  kind = "char"

  def __init__(self, chars: str):
    self.chars = chars
    self.vocab_size = len(chars)
    self._index = {c: i for i, c in enumerate(chars)}
    self._lookup = np.array([ord(c) for c in chars], dtype=np.int64)

  @classmethod
  def fit(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  def encode(self, text: str) -> np.ndarray:
    try:
      return np.fromiter((self._index[c] for c in text), dtype=np.int32, count=len(text))
    except KeyError as e:
      raise UnknownCharacterError(
          f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

  def decode(self, ids) -> str:
    return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1) if 0 <= i < self.vocab_size)

  def to_json(self) -> dict:
    return {"kind": self.kind, "chars": self.chars}


class ByteTokenizer:
  """UTF-8 bytes: every text encodes, vocab 256."""
  kind = "byte"
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    data = bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 <= i < 256)
    return data.decode("utf-8", errors="replace")

  def to_json(self) -> dict:
    return {"kind": self.kind}


def fit(kind: str, train_text: str) -> Tokenizer:
  """Builds the tokenizer named by `data.tokenizer` from the training text."""
  if kind == "char":
    return CharTokenizer.fit(train_text)
  if kind == "byte":
    return ByteTokenizer()
  raise ValueError(f"data.tokenizer={kind!r} is not one of ['byte', 'char']")


def from_json(spec: dict) -> Tokenizer:
  if spec.get("kind") == "char":
    return CharTokenizer(spec["chars"])
  if spec.get("kind") == "byte":
    return ByteTokenizer()
  raise ValueError(f"unknown tokenizer kind {spec.get('kind')!r}")


def save(tokenizer: Tokenizer, workdir: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(workdir) / FILENAME
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(tokenizer.to_json(), ensure_ascii=False))
  os.replace(tmp, path)  # atomic: a killed process never leaves half a tokenizer
  return path


def load(workdir: str | os.PathLike) -> Tokenizer:
  path = pathlib.Path(workdir) / FILENAME
  if not path.exists():
    raise FileNotFoundError(f"no tokenizer at {path}")
  return from_json(json.loads(path.read_text()))
