"""Training and evaluation windows read from memory-mapped token stores through Grain.

A global batch is rebuilt from its index alone: row i of the endless stream picks a source
(data.mixture), then the i-th example of that source's seeded, per-epoch shuffled order.
Each process gathers only its own rows, so memory is bounded by the batch. An example is a
window of seq_len+1 tokens: without packing it starts at any token (as nanoGPT samples);
with packing (`data.packing`) the stream is cut into consecutive rows, and each row carries
segment ids, positions within its document and a loss mask, so that attention and the loss
never cross a document boundary.
"""
import sys

import grain
import numpy as np

from treadle.data import corpus
from treadle.data import mixture


def num_examples(view: corpus.View, seq_len: int, packed: bool) -> int:
  return (view.num_tokens - 1) // seq_len if packed else view.num_tokens - seq_len


def _example_starts(examples: np.ndarray, seq_len: int, packed: bool) -> np.ndarray:
  return examples * seq_len if packed else examples


def gather(view: corpus.View, starts: np.ndarray, seq_len: int, packed: bool) -> dict:
  """Windows at stream positions `starts`: inputs/targets, plus segment fields if packed."""
  positions = starts[:, None] + np.arange(seq_len + 1)[None, :]
  tokens, piece = view.read(positions)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  if not packed:
    return batch
  piece_in = piece[:, :-1]
  # where each token's segment begins inside the window (a document cut by the window's
  # start begins at 0): positions restart at every document, as in its own forward pass
  segment_start = np.maximum(view.cum[piece_in] - starts[:, None], 0)
  batch["positions"] = (np.arange(seq_len)[None, :] - segment_start).astype(np.int32)
  batch["segment_ids"] = (piece_in - piece_in[:, :1] + 1).astype(np.int32)
  # a target from the next document (after this one's end of text) is not predicted
  batch["loss_mask"] = (piece_in == piece[:, 1:]).astype(np.float32)
  return batch


def _gather_rows(views, source_of_row: np.ndarray, starts: np.ndarray, seq_len: int,
                 packed: bool) -> dict:
  """Rows from several sources, each gathered with its source's view, kept in row order."""
  out = None
  for s in np.unique(source_of_row):
    where = source_of_row == s
    part = gather(views[s], starts[where], seq_len, packed)
    if out is None:
      out = {k: np.empty((len(starts), *v.shape[1:]), v.dtype) for k, v in part.items()}
    for k, v in part.items():
      out[k][where] = v
  return out


class BatchSource:
  """Grain random-access source: item b = this process's rows of global batch b."""

  def __init__(self, split: corpus.Split, seq_len: int, global_batch: int, seed: int,
               packed: bool, process_index: int = 0, process_count: int = 1):
    if global_batch % process_count:
      raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
    local = global_batch // process_count
    self._rows = np.arange(process_index * local, (process_index + 1) * local)
    self._split, self._seq_len, self._packed = split, seq_len, packed
    self._global_batch, self._seed = global_batch, seed
    # source 0 shuffles with the seed itself: one source reads as it always has
    self._orders = [grain.MapDataset.range(num_examples(v, seq_len, packed))
                    .shuffle(seed + 7919 * s).repeat(None) for s, v in enumerate(split.views)]

  def __len__(self) -> int:
    return sys.maxsize  # endless; the iterator's position is what the checkpoint keeps

  def __getitem__(self, index: int) -> dict:
    rows = index * self._global_batch + self._rows
    source_of_row = mixture.pick(rows, self._split.weights, self._seed)
    examples = np.array([self._orders[s][int(r)] for s, r in zip(source_of_row, rows)],
                        dtype=np.int64)
    return _gather_rows(self._split.views, source_of_row,
                        _example_starts(examples, self._seq_len, self._packed),
                        self._seq_len, self._packed)


def train_iterator(split: corpus.Split, seq_len: int, global_batch: int, seed: int,
                   packed: bool, process_index: int = 0, process_count: int = 1
                   ) -> grain.DatasetIterator:
  """Endless seeded batches; get_state()/set_state() resume at the same batch."""
  source = BatchSource(split, seq_len, global_batch, seed, packed, process_index, process_count)
  options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
  return iter(grain.MapDataset.source(source).to_iter_dataset(options))


def fixed_batches(split: corpus.Split, seq_len: int, global_batch: int, num_batches: int,
                  packed: bool, process_index: int = 0, process_count: int = 1) -> list[dict]:
  """The same evaluation batches every time, so val losses are comparable.

  num_batches > 0: that many batches drawn like training batches with seed 0.
  num_batches == 0: every source's split as consecutive non-overlapping windows (the
  remainder that doesn't fill a batch is left out, unless the split is smaller than one
  batch, when windows wrap around).
  """
  if num_batches > 0:
    source = BatchSource(split, seq_len, global_batch, 0, packed, process_index, process_count)
    return [source[i] for i in range(num_batches)]
  sources = np.concatenate([np.full(len(range(0, v.num_tokens - seq_len, seq_len)), s)
                            for s, v in enumerate(split.views)])
  starts = np.concatenate([np.arange(0, v.num_tokens - seq_len, seq_len) for v in split.views])
  count = max(len(starts) // global_batch, 1)
  sources = np.resize(sources, count * global_batch).reshape(count, global_batch)
  starts = np.resize(starts, count * global_batch).reshape(count, global_batch)
  local = global_batch // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  return [_gather_rows(split.views, s[rows], t[rows], seq_len, packed)
          for s, t in zip(sources, starts)]
