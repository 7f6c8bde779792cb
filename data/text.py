"""The language-model data config, and windows of in-memory token arrays.

Corpora on disk go through data/corpus.py (sources, token cache, splits) and
data/windows.py (Grain batches); see there."""
import dataclasses

import grain
import numpy as np

from treadle.configs import base
from treadle.data import corpus
from treadle.data import sources
from treadle.data import token_cache
from treadle.data import tokenizers
from treadle.data import windows


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """data.* of a text corpus: keys, base values and meanings in configs/base.py."""
  path: str
  text_field: str
  mixture: str
  packing: bool
  tokenizer: str
  vocab_size: int
  tokenizer_sample_bytes: int
  seq_len: int
  val_fraction: float
  test_fraction: float
  cache_dir: str
  prepare_workers: int

  def __post_init__(self):
    base.check_fields("data", "lm", self)  # each key's own range: configs/base.py
    if self.tokenizer == "bpe":
      tokenizers.check_bpe_vocab_size(self.vocab_size)
    if self.mixture:
      if self.path:
        raise ValueError("set data.path or data.mixture, not both")
      sources.parse_mixture(self.mixture)  # a malformed spec fails before any reading


def in_memory_split(tokens: np.ndarray) -> corpus.Split:
  """A token array as a one-source, one-document split (tests, notebooks)."""
  n = len(tokens)
  store = token_cache.Store(None, [np.asarray(tokens)], np.array([0, n]), np.array([0, n]))
  return corpus.Split(("data",), (1.0,), (corpus.View.of(store, [0], [n]),))


def train_iterator(tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Endless seeded random windows of an in-memory token array (see windows.train_iterator)."""
  return windows.train_iterator(in_memory_split(tokens), seq_len, global_batch, seed, False,
                                process_index, process_count)


def fixed_batches(tokens: np.ndarray, seq_len: int, global_batch: int, num_batches: int,
                  process_index: int = 0, process_count: int = 1) -> list[dict]:
  """Evaluation batches of an in-memory token array (see windows.fixed_batches)."""
  return windows.fixed_batches(in_memory_split(tokens), seq_len, global_batch, num_batches,
                               False, process_index, process_count)
