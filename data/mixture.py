"""Mixtures: which source each training example comes from, drawn by weight from the seed.

Example i of the endless global stream comes from the source whose cumulative weight first
exceeds u(seed, i), a fixed pseudo-random number: any batch can be rebuilt from its index
alone (exact resume, every process agreeing without communication).
"""
import logging

import numpy as np

log = logging.getLogger("treadle")
_CHUNK = 1 << 22  # rows per chunk when counting realised proportions (bounded memory)


def uniform(index: np.ndarray, salt: int) -> np.ndarray:
  """splitmix64 of (index + salt) as a float in [0, 1): independent-looking per index."""
  with np.errstate(over="ignore"):
    x = (index.astype(np.uint64) + np.uint64(salt % (1 << 64))) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def pick(rows: np.ndarray, weights: tuple[float, ...], seed: int) -> np.ndarray:
  """The source index of each global example row."""
  if len(weights) == 1:
    return np.zeros(rows.shape, np.int64)
  cumulative = np.cumsum(weights) / np.sum(weights)
  return np.minimum(np.searchsorted(cumulative, uniform(rows, seed * 0x1_0000_0001 + 17),
                                    side="right"), len(weights) - 1)


def realised(weights: tuple[float, ...], seed: int, num_rows: int) -> np.ndarray:
  """Fraction of the first `num_rows` examples drawn from each source."""
  counts = np.zeros(len(weights), np.int64)
  for start in range(0, num_rows, _CHUNK):
    rows = np.arange(start, min(start + _CHUNK, num_rows))
    counts += np.bincount(pick(rows, weights, seed), minlength=len(weights))
  return counts / max(num_rows, 1)


def log_realised(names: tuple[str, ...], weights: tuple[float, ...], seed: int,
                 num_rows: int) -> str | None:
  """Logs (and returns) the proportions this run's examples realise; None for one source."""
  if len(names) < 2:
    return None
  shares = realised(weights, seed, num_rows)
  line = "mixture over %d training examples: %s" % (num_rows, ", ".join(
      f"{n} {s:.4f} (weight {w:.4f})" for n, s, w in zip(names, shares, weights)))
  log.info(line)
  return line
