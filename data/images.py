"""Image datasets available offline (scikit-learn's bundled 8x8 digits) and Grain pipelines."""
import dataclasses
import functools
import json
import pathlib

import grain
import numpy as np

from treadle.common import fileio
from treadle.configs import base

FILENAME = "preprocess.json"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """data.* of an image dataset: keys, base values and meanings in configs/base.py."""
  dataset: str
  val_fraction: float
  test_fraction: float
  split_seed: int
  max_shift: int

  def __post_init__(self):
    base.check_fields("data", "classify", self)  # each key's own range: configs/base.py


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """What inference needs to turn raw pixels into model inputs and ids into labels."""
  image_shape: tuple[int, int]
  pixel_max: float            # raw pixel range is [0, pixel_max]
  mean: float                 # of the training split, after scaling to [0, 1]
  std: float
  labels: tuple[str, ...]

  def normalize(self, raw: np.ndarray) -> np.ndarray:
    return ((raw / self.pixel_max - self.mean) / self.std).astype(np.float32)

  def save(self, workdir) -> None:
    fileio.atomic_write(pathlib.Path(workdir) / FILENAME, json.dumps(dataclasses.asdict(self)))

  @classmethod
  def load(cls, workdir) -> "Preprocess":
    spec = json.loads((pathlib.Path(workdir) / FILENAME).read_text())
    return cls(tuple(spec["image_shape"]), spec["pixel_max"], spec["mean"], spec["std"],
               tuple(spec["labels"]))


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray   # [N, H, W] float32, normalised
  labels: np.ndarray   # [N] int32


def load(cfg: DataConfig) -> tuple[Split, Split, Split, Preprocess]:
  """Shuffled once (split_seed) and split train/val/test; normalised by train statistics."""
  from sklearn import datasets  # local: only image runs need scikit-learn
  digits = datasets.load_digits()
  order = np.random.default_rng(cfg.split_seed).permutation(len(digits.target))
  images, labels = digits.images[order], digits.target[order].astype(np.int32)
  n_test, n_val = int(len(labels) * cfg.test_fraction), int(len(labels) * cfg.val_fraction)
  n_train = len(labels) - n_val - n_test
  scaled = images[:n_train] / 16.0
  prep = Preprocess(images.shape[1:], 16.0, float(scaled.mean()), float(scaled.std()),
                    tuple(str(i) for i in range(10)))
  cut = [0, n_train, n_train + n_val, len(labels)]
  splits = [Split(prep.normalize(images[a:b]), labels[a:b]) for a, b in zip(cut, cut[1:])]
  return splits[0], splits[1], splits[2], prep


def _shift(image: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
  """Translates by up to max_shift pixels in each direction, filling with the background."""
  dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
  background = image.min()
  out = np.full_like(image, background)
  h, w = image.shape
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


def _example(split: Split, max_shift: int, index, rng: np.random.Generator | None = None):
  image = split.images[index]
  if rng is not None and max_shift:
    image = _shift(image, rng, max_shift)
  return {"images": image, "labels": split.labels[index]}


def _rows(process_index: int, process_count: int, batch: dict) -> dict:
  local = len(batch["labels"]) // process_count
  return {k: v[process_index * local:(process_index + 1) * local] for k, v in batch.items()}


def train_iterator(split: Split, global_batch: int, seed: int, max_shift: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Shuffled each epoch, randomly shifted (seeded per example: resumable), batched."""
  ds = (grain.MapDataset.range(len(split.labels)).shuffle(seed).repeat(None)
        .random_map(lambda i, rng: _example(split, max_shift, i, rng), seed=seed + 1)
        .batch(global_batch, drop_remainder=True)
        .map(functools.partial(_rows, process_index, process_count)))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)))


def fixed_batches(split: Split, global_batch: int, process_index: int = 0,
                  process_count: int = 1) -> list[dict]:
  """The whole split in order, no augmentation. The last batch is filled up with repeats
  whose `weights` are 0, so every example counts exactly once."""
  n = len(split.labels)
  count = -(-n // global_batch)
  index = np.resize(np.arange(n), count * global_batch).reshape(count, global_batch)
  weights = (np.arange(count * global_batch) < n).astype(np.float32).reshape(count, -1)
  batches = [{"images": split.images[i], "labels": split.labels[i], "weights": w}
             for i, w in zip(index, weights)]
  return [_rows(process_index, process_count, b) for b in batches]
