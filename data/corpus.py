"""A corpus: its sources tokenized through the cache, its tokenizer, and its splits.

A source holding one document (one text file, the default corpus) is split contiguously
into train/val/test by tokens, as before. A multi-document source holds out whole
documents for val and test: each document gets a fixed pseudo-random number u from its
index; the documents with the smallest u become val, then test. The BPE tokenizer learns
from a bounded sample (`data.tokenizer_sample_bytes`) of documents with u above a threshold
that the held-out ones stay below, so its merges carry no val/test statistics.
"""
import dataclasses
import itertools
import json
import os
import pathlib
import tempfile

import numpy as np

from treadle.data import mixture
from treadle.data import shakespeare
from treadle.data import sources as sources_lib
from treadle.data import token_cache
from treadle.data import tokenizers

_SPLIT_SALT = 0x5EED_D0C5  # fixed: the held-out documents are a property of the corpus


@dataclasses.dataclass(frozen=True)
class View:
  """Token ranges of a store read as one stream; each range ("piece": a document or part of
  one) is its own segment when windows are packed."""
  store: token_cache.Store
  starts: np.ndarray  # global start of each piece in the store
  cum: np.ndarray     # start of each piece in this stream, then the total

  @classmethod
  def of(cls, store: token_cache.Store, starts: np.ndarray, lengths: np.ndarray) -> "View":
    cum = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return cls(store, np.asarray(starts, np.int64), cum)

  @property
  def num_tokens(self) -> int:
    return int(self.cum[-1])

  def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, piece index) at stream positions (any shape)."""
    piece = np.searchsorted(self.cum, positions, side="right") - 1
    return self.store.read(self.starts[piece] + positions - self.cum[piece]), piece


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of every source, with the sources' names and mixture weights."""
  names: tuple[str, ...]
  weights: tuple[float, ...]
  views: tuple[View, ...]


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: Split
  val: Split
  test: Split
  tokenizer: tokenizers.Tokenizer


def corpus_sources(cfg) -> list[sources_lib.Source]:
  """`data.mixture`, else `data.path`, else the default Shakespeare corpus."""
  if not cfg.path and not cfg.mixture:
    return [sources_lib.Source("data", (str(shakespeare.corpus_path(cfg.cache_dir or None)),))]
  return sources_lib.sources(cfg.path, cfg.mixture)


def load(cfg, tokenizer: tokenizers.Tokenizer | None = None) -> Corpus:
  """Fits the tokenizer (unless given: resume, fine-tuning), tokenizes every source through
  the cache, and splits each; all errors come before anything is written."""
  srcs = corpus_sources(cfg)
  root = token_cache.cache_root(cfg.cache_dir)
  prints = [sources_lib.fingerprint(s.files) for s in srcs]  # hashed once, keys both caches
  tokenizer, sample_ends, record = _tokenizer_and_sample(srcs, prints, cfg, root, tokenizer)
  try:
    stores = token_cache.build_or_load(srcs, tokenizer, cfg.text_field, root,
                                       cfg.prepare_workers, prints)
  except tokenizers.UnknownCharacterError as e:
    raise tokenizers.UnknownCharacterError(f"{e} (inherited tokenizer)") from None
  if record is not None:  # written only once every source has tokenized cleanly
    _write_json(*record)
  parts = [_split_source(*args, cfg) for args in zip(srcs, stores, sample_ends)]
  names = tuple(s.name for s in srcs)
  weights = tuple(s.weight for s in srcs)
  return Corpus(*(Split(names, weights, tuple(p[i] for p in parts)) for i in range(3)), tokenizer)


# -- the tokenizer and the sample it learns from -------------------------------------------

def _tokenizer_and_sample(srcs, prints: list, cfg, root: pathlib.Path, tokenizer):
  """(tokenizer, per source: index after the last sampled document, the (path, record) to
  cache them under); keyed by the sources' fingerprints and the fitting settings, so a
  second run reads no text for them."""
  key = token_cache.digest({
      "version": token_cache.VERSION, "text_field": cfg.text_field,
      "files": prints,
      "weights": [s.weight for s in srcs], "kind": cfg.tokenizer, "vocab_size": cfg.vocab_size,
      "sample_bytes": cfg.tokenizer_sample_bytes, "val": cfg.val_fraction,
      "test": cfg.test_fraction})
  path = root / "tokenizers" / f"{key}.json"
  if path.exists():
    record = json.loads(path.read_text())
    return (tokenizer or tokenizers.from_json(record["tokenizer"])), record["sample_ends"], None
  texts, sample_ends = _sample(srcs, cfg)
  if tokenizer is not None:  # inherited: only the sample's extent matters (for the split)
    return tokenizer, sample_ends, None
  if cfg.tokenizer == "char":  # every character of the corpus, so val/test encode
    texts = ["".join(sorted(_all_characters(srcs, cfg.text_field)))]
  fitted = tokenizers.fit(cfg.tokenizer, texts, cfg.vocab_size)
  return fitted, sample_ends, (path, {"tokenizer": fitted.to_json(), "sample_ends": sample_ends})


def _write_json(path: pathlib.Path, value) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(value, f)
  os.replace(tmp, path)  # atomic: readers see the old file or the whole new one


def _documents(source: sources_lib.Source, text_field: str):
  for f in source.files:
    yield from sources_lib.read_documents(f, text_field)


def _all_characters(srcs, text_field: str) -> set[str]:
  chars: set[str] = set()
  for source in srcs:
    for doc in _documents(source, text_field):
      chars.update(doc)
  return chars


def _sample(srcs, cfg) -> tuple[list[str], list[int]]:
  """BPE's training texts (each source gets its weight's share of the byte budget) and, per
  source, the index after the last document read for them (0 when nothing is sampled)."""
  texts, ends = [], []
  for source in srcs:
    if cfg.tokenizer != "bpe":
      ends.append(0)
      continue
    budget = int(cfg.tokenizer_sample_bytes * source.weight)
    docs = _documents(source, cfg.text_field)
    head = list(itertools.islice(docs, 2))
    if len(head) == 1:  # one document: the leading train fraction of it, as before
      n = len(head[0])
      train_chars = n - int(n * cfg.val_fraction) - int(n * cfg.test_fraction)
      texts.append(head[0][:min(budget, train_chars)])  # characters: close to bytes
      ends.append(1)
      continue
    end = 0
    for index, doc in enumerate(itertools.chain(head, docs)):
      end = index + 1
      if _uniform(np.array([index]))[0] >= _threshold(cfg):
        texts.append(doc[:budget])  # a long last document is cut (by characters)
        budget -= len(doc.encode("utf-8"))
        if budget <= 0:
          break
    ends.append(end)
  return texts, ends


def _uniform(index: np.ndarray) -> np.ndarray:
  """A fixed pseudo-random number in [0, 1) per document index."""
  return mixture.uniform(index, _SPLIT_SALT)


def _threshold(cfg) -> float:
  """Documents at or above it may be sampled for BPE; the held-out ones lie below it."""
  return min(0.5, 2 * (cfg.val_fraction + cfg.test_fraction))


# -- splits --------------------------------------------------------------------------------

def _describe(source: sources_lib.Source) -> str:
  return source.files[0] if len(source.files) == 1 else f"{source.key} ({len(source.files)} files)"


def _split_source(source, store: token_cache.Store, sample_end: int, cfg) -> tuple[View, ...]:
  if store.num_documents == 1:
    parts = _contiguous(store, cfg)
  else:
    parts = _held_out(source, store, sample_end, cfg)
  for name, view in zip(("train", "val", "test"), parts):
    if view.num_tokens < cfg.seq_len + 1:
      raise ValueError(f"{_describe(source)!r} is too short: its {name} split has "
                       f"{view.num_tokens} tokens, one window needs data.seq_len+1="
                       f"{cfg.seq_len + 1}")
  return parts


def _contiguous(store: token_cache.Store, cfg) -> tuple[View, View, View]:
  """One document (without its end of text) cut into train | val | test."""
  n = store.num_tokens - 1
  n_test, n_val = int(n * cfg.test_fraction), int(n * cfg.val_fraction)
  bounds = np.array([0, n - n_val - n_test, n - n_test, n])
  return tuple(View.of(store, bounds[i:i + 1], np.diff(bounds)[i:i + 1]) for i in range(3))


def _held_out(source, store: token_cache.Store, sample_end: int, cfg) -> tuple[View, View, View]:
  """Whole documents: the smallest u among those BPE did not learn from -> val, then test."""
  n = store.num_documents
  index = np.arange(n)
  u = _uniform(index)
  candidates = index[(u < _threshold(cfg)) | (index >= sample_end)]
  n_val, n_test = max(1, round(n * cfg.val_fraction)), max(1, round(n * cfg.test_fraction))
  if len(candidates) < n_val + n_test or n <= n_val + n_test:
    raise ValueError(f"{_describe(source)!r} has too few documents ({n}) to hold out "
                     f"{n_val} for val and {n_test} for test")
  ranked = candidates[np.argsort(u[candidates], kind="stable")]
  val, test = np.sort(ranked[:n_val]), np.sort(ranked[n_val:n_val + n_test])
  train = np.setdiff1d(index, np.concatenate([val, test]))
  starts, lengths = store.doc_starts[:-1], np.diff(store.doc_starts)
  return tuple(View.of(store, starts[d], lengths[d]) for d in (train, val, test))
