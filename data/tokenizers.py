"""Character, byte and byte-level BPE tokenizers, saved to and loaded from the run directory
as JSON. Each has an end-of-text token (`eot_id`) that separates documents; tokenizers saved
before it existed load without one (`eot_id` None) and keep their vocabulary."""
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

from treadle.common import fileio

FILENAME = "tokenizer.json"
EOT_TEXT = "<|endoftext|>"  # the BPE special token (GPT-2's name for it)


class Tokenizer(Protocol):
  kind: str
  vocab_size: int
  eot_id: int | None  # end of text: appended to every document of a multi-document corpus

  def encode(self, text: str) -> np.ndarray: ...
  def decode(self, ids) -> str: ...
  def to_json(self) -> dict: ...


class UnknownCharacterError(ValueError):
  """Raised when text holds characters outside the tokenizer's vocabulary."""


class CharTokenizer:
  """One id per distinct character of the corpus (nanoGPT's shakespeare_char)."""
  kind = "char"

  def __init__(self, chars: str, eot: bool = True):
    self.chars = chars
    self.eot_id = len(chars) if eot else None  # the id after the characters'
    self.vocab_size = len(chars) + eot
    codes = np.array([ord(c) for c in chars], dtype=np.uint32)
    self._order = np.argsort(codes, kind="stable")
    self._sorted_codes = codes[self._order]

  @classmethod
  def fit(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  def encode(self, text: str) -> np.ndarray:
    # vectorised over code points (a dict lookup per character ran at ~15 MB/s)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    where = np.minimum(np.searchsorted(self._sorted_codes, codes), max(len(self.chars) - 1, 0))
    unknown = (self._sorted_codes[where] != codes) if len(self.chars) else np.ones(len(codes), bool)
    if unknown.any():
      c = chr(int(codes[np.argmax(unknown)]))
      raise UnknownCharacterError(f"character {c!r} is not in the tokenizer's vocabulary")
    return self._order[where].astype(np.int32)

  def decode(self, ids) -> str:
    n = len(self.chars)
    return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1) if 0 <= i < n)

  def to_json(self) -> dict:
    return {"kind": self.kind, "chars": self.chars, "eot": self.eot_id is not None}


class ByteTokenizer:
  """UTF-8 bytes: every text encodes; id 256 is end of text (vocab 257)."""
  kind = "byte"

  def __init__(self, eot: bool = True):
    self.eot_id = 256 if eot else None
    self.vocab_size = 256 + eot

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    data = bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 <= i < 256)
    return data.decode("utf-8", errors="replace")

  def to_json(self) -> dict:
    return {"kind": self.kind, "eot": self.eot_id is not None}


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
                     "(256 byte symbols, end of text and merges)")


class BpeTokenizer:
  """GPT-2 style byte-level BPE trained with HuggingFace `tokenizers`: every text encodes
  (all 256 bytes are symbols) and decodes back exactly."""
  kind = "bpe"

  def __init__(self, hf_tokenizer: hf.Tokenizer):
    self._hf = hf_tokenizer
    self.vocab_size = hf_tokenizer.get_vocab_size()
    self.eot_id = hf_tokenizer.token_to_id(EOT_TEXT)  # None in tokenizers saved before it

  @classmethod
  def fit(cls, text: str | list[str], vocab_size: int) -> "BpeTokenizer":
    """Learns merges from a text or a list of documents (a bounded sample of a corpus)."""
    check_bpe_vocab_size(vocab_size)
    tok = hf.Tokenizer(hf_models.BPE())
    # no prefix space: it would change the text ("a" -> " a") and break exact round trips
    tok.pre_tokenizer = hf_pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf_decoders.ByteLevel()
    trainer = hf_trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, special_tokens=[EOT_TEXT],
        initial_alphabet=hf_pre_tokenizers.ByteLevel.alphabet())  # bytes unseen in training too
    texts = [text] if isinstance(text, str) else text
    tok.train_from_iterator((p for t in texts for p in _pieces(t)), trainer)
    return cls(tok)

  def encode(self, text: str) -> np.ndarray:
    encodings = self._hf.encode_batch_fast(_pieces(text), add_special_tokens=False)
    return np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encodings])

  def encode_many(self, docs: list[str]) -> list[np.ndarray]:
    """Each document's ids, all pieces of all documents in one parallel batch."""
    pieces = [_pieces(d) for d in docs]
    encodings = self._hf.encode_batch_fast([p for ps in pieces for p in ps],
                                           add_special_tokens=False)
    out, i = [], 0
    for ps in pieces:
      ids = [np.asarray(e.ids, dtype=np.int32) for e in encodings[i:i + len(ps)]]
      out.append(np.concatenate(ids) if ids else np.zeros(0, np.int32))
      i += len(ps)
    return out

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    return self._hf.decode(ids[(ids >= 0) & (ids < self.vocab_size)].tolist())

  def to_json(self) -> dict:
    return {"kind": self.kind, "hf": json.loads(self._hf.to_str())}


class HfTokenizer:
  """A Hugging Face `tokenizer.json` brought in with an imported model (treadle-import-hf),
  with its special tokens and chat template. Text encodes without added special tokens
  (no BOS), as training windows do; `vocab_size` is the model's embedding rows, which may
  exceed the tokenizer's own vocabulary (ids it never produces)."""
  kind = "hf"

  def __init__(self, hf_tokenizer: hf.Tokenizer, vocab_size: int,
               tokenizer_config: dict | None = None, chat_template: str | None = None,
               token_ids: dict | None = None):
    self._hf = hf_tokenizer
    self.vocab_size = vocab_size
    self.tokenizer_config = tokenizer_config or {}  # HF's tokenizer_config.json, as found
    self.chat_template = chat_template
    # bos/eos/pad_token_id of the model's config.json; generation_eos_token_id: the
    # eos_token_id of its generation_config.json
    self.token_ids = dict(token_ids or {})

  @property
  def hf_tokenizer(self) -> hf.Tokenizer:
    return self._hf

  @property
  def eot_id(self) -> int | None:
    """The model's end-of-sequence token separates documents (GPT-2's is <|endoftext|>)."""
    eos = self.token_ids.get("eos_token_id")
    if isinstance(eos, list):  # some configs list several; the first is the canonical one
      eos = eos[0] if eos else None
    return eos

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    return self._hf.decode(ids[(ids >= 0) & (ids < self.vocab_size)].tolist(),
                           skip_special_tokens=False)

  def to_json(self) -> dict:
    return {"kind": self.kind, "hf": json.loads(self._hf.to_str()), "vocab_size": self.vocab_size,
            "tokenizer_config": self.tokenizer_config, "chat_template": self.chat_template,
            "token_ids": self.token_ids}


def special_token_text(value) -> str | None:
  """A special token of tokenizer_config.json as text: HF writes a string or an AddedToken
  object {"content": "<s>", ...}; anything else (null, a flag) is None."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _ids(value) -> list[int]:
  """config.json's eos_token_id: null, an id, or a list of ids."""
  if value is None:
    return []
  return [int(v) for v in (value if isinstance(value, list) else [value])]


def stop_token_ids(tokenizer: Tokenizer) -> list[int]:
  """Every id that ends a generation, sorted. An imported model's: config.json's and
  generation_config.json's eos_token_id (each an id or a list) and the id of
  tokenizer_config.json's eos_token, which chat templates end a turn with (Qwen2's
  <|im_end|>, Llama 3's <|eot_id|>, while config.json names <|endoftext|>, <|end_of_text|>).
  treadle's own tokenizers: their end-of-text id, if they have one."""
  if not isinstance(tokenizer, HfTokenizer):
    eot = getattr(tokenizer, "eot_id", None)
    return [] if eot is None else [int(eot)]
  ids = set(_ids(tokenizer.token_ids.get("eos_token_id")))
  ids.update(_ids(tokenizer.token_ids.get("generation_eos_token_id")))
  text = special_token_text(tokenizer.tokenizer_config.get("eos_token"))
  if text is not None and (eos := tokenizer.hf_tokenizer.token_to_id(text)) is not None:
    ids.add(eos)
  return sorted(ids)


KINDS = ("bpe", "byte", "char", "hf")


def fit(kind: str, train_text: str | list[str], vocab_size: int = 0) -> Tokenizer:
  """Builds the tokenizer named by `data.tokenizer` from the training text; `vocab_size`
  (`data.vocab_size`) is used by bpe only."""
  if kind == "char":
    return CharTokenizer.fit(train_text if isinstance(train_text, str) else "".join(train_text))
  if kind == "byte":
    return ByteTokenizer()
  if kind == "bpe":
    return BpeTokenizer.fit(train_text, vocab_size)
  if kind == "hf":
    raise ValueError("data.tokenizer='hf' is an imported model's tokenizer (treadle-import-hf): "
                     "it comes with train.init_from, it cannot be fitted")
  raise ValueError(f"data.tokenizer={kind!r} is not one of {list(KINDS)}")


def from_json(spec: dict) -> Tokenizer:
  # "eot" absent: a tokenizer saved before end-of-text tokens existed (same vocabulary)
  if spec.get("kind") == "char":
    return CharTokenizer(spec["chars"], spec.get("eot", False))
  if spec.get("kind") == "byte":
    return ByteTokenizer(spec.get("eot", False))
  if spec.get("kind") == "bpe":
    return BpeTokenizer(hf.Tokenizer.from_str(json.dumps(spec["hf"])))
  if spec.get("kind") == "hf":
    return HfTokenizer(hf.Tokenizer.from_str(json.dumps(spec["hf"])), spec["vocab_size"],
                       spec.get("tokenizer_config"), spec.get("chat_template"),
                       spec.get("token_ids"))
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


def encode_documents(tokenizer: Tokenizer, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """(tokens of every document each followed by end of text, token count of each)."""
  if tokenizer.eot_id is None:
    raise ValueError(f"the {tokenizer.kind} tokenizer has no end-of-text token (saved by an "
                     "older treadle): documents cannot be separated")
  if isinstance(tokenizer, BpeTokenizer):
    parts = tokenizer.encode_many(docs)
  else:
    parts = [tokenizer.encode(d) for d in docs]
  eot = np.array([tokenizer.eot_id], dtype=np.int32)
  lengths = np.array([len(p) + 1 for p in parts], dtype=np.int64)
  flat = np.concatenate([x for p in parts for x in (p, eot)]) if parts else np.zeros(0, np.int32)
  return flat, lengths
