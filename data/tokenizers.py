"""Character, byte and byte-level BPE tokenizers, saved to and loaded from the run directory
as JSON."""
import json
import os
import pathlib
import re
from typing import Protocol

import numpy as np
# absolute import: this is HuggingFace's package, not this module (data.tokenizers)
import tokenizers as hf
from tokenizers import decoders as hf_decoders
from tokenizers import models as hf_models
from tokenizers import pre_tokenizers as hf_pre_tokenizers
from tokenizers import trainers as hf_trainers

from treadle.train import fileio

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


# A byte-level pre-token never runs from a non-space character into whitespace, so cutting
# just before a newline that follows printable ASCII leaves every pre-token, hence every
# id, as encoding the whole string would; the pieces then encode in parallel in Rust.
_CUT = re.compile(r"(?<=[!-~])(?=\n)")
_PIECE_CHARS = 1 << 13  # measured fastest on the 5 MB corpus (2 cores)


def _pieces(text: str, piece_chars: int = _PIECE_CHARS) -> list[str]:
  pieces, start = [], 0
  while (cut := _CUT.search(text, start + piece_chars)) is not None:
    pieces.append(text[start:cut.start()])
    start = cut.start()
  pieces.append(text[start:])
  return pieces


def check_bpe_vocab_size(vocab_size: int) -> None:
  if vocab_size <= 256:
    raise ValueError(f"data.vocab_size={vocab_size} must be > 256 for data.tokenizer='bpe' "
                     "(256 byte symbols + merges)")


class BpeTokenizer:
  """GPT-2 style byte-level BPE trained with HuggingFace `tokenizers`: every text encodes
  (all 256 bytes are symbols) and decodes back exactly."""
  kind = "bpe"

  def __init__(self, hf_tokenizer: hf.Tokenizer):
    self._hf = hf_tokenizer
    self.vocab_size = hf_tokenizer.get_vocab_size()

  @classmethod
  def fit(cls, text: str, vocab_size: int) -> "BpeTokenizer":
    check_bpe_vocab_size(vocab_size)
    tok = hf.Tokenizer(hf_models.BPE())
    # no prefix space: it would change the text ("a" -> " a") and break exact round trips
    tok.pre_tokenizer = hf_pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf_decoders.ByteLevel()
    trainer = hf_trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=hf_pre_tokenizers.ByteLevel.alphabet())  # bytes unseen in training too
    tok.train_from_iterator(_pieces(text), trainer)
    return cls(tok)

  def encode(self, text: str) -> np.ndarray:
    encodings = self._hf.encode_batch_fast(_pieces(text), add_special_tokens=False)
    return np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encodings])

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    return self._hf.decode(ids[(ids >= 0) & (ids < self.vocab_size)].tolist())

  def to_json(self) -> dict:
    return {"kind": self.kind, "hf": json.loads(self._hf.to_str())}


KINDS = ("bpe", "byte", "char")


def fit(kind: str, train_text: str, vocab_size: int = 0) -> Tokenizer:
  """Builds the tokenizer named by `data.tokenizer` from the training text; `vocab_size`
  (`data.vocab_size`) is used by bpe only."""
  if kind == "char":
    return CharTokenizer.fit(train_text)
  if kind == "byte":
    return ByteTokenizer()
  if kind == "bpe":
    return BpeTokenizer.fit(train_text, vocab_size)
  raise ValueError(f"data.tokenizer={kind!r} is not one of {list(KINDS)}")


def from_json(spec: dict) -> Tokenizer:
  if spec.get("kind") == "char":
    return CharTokenizer(spec["chars"])
  if spec.get("kind") == "byte":
    return ByteTokenizer()
  if spec.get("kind") == "bpe":
    return BpeTokenizer(hf.Tokenizer.from_str(json.dumps(spec["hf"])))
  raise ValueError(f"unknown tokenizer kind {spec.get('kind')!r}")


def save(tokenizer: Tokenizer, workdir: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(workdir) / FILENAME
  # atomic: a killed process never leaves half a tokenizer
  fileio.atomic_write(path, json.dumps(tokenizer.to_json(), ensure_ascii=False))
  return path


def load(workdir: str | os.PathLike) -> Tokenizer:
  path = pathlib.Path(workdir) / FILENAME
  if not path.exists():
    raise FileNotFoundError(f"no tokenizer at {path}")
  try:
    return from_json(json.loads(path.read_text(encoding="utf-8")))
  except Exception as e:  # JSON, missing fields, or HF's own parse error (a plain Exception)
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{str(path)!r} is not a valid tokenizer file: {reason}") from None
