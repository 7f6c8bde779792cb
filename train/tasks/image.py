"""Image classification as a treadle task: digits data, CNN/ViT models, accuracy, confusion."""
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from treadle.data import images
from treadle.common import fileio
from treadle.train import state as state_lib
from treadle.train.tasks import base


class ImageClassification(base.Task):
  """Softmax classification of single-channel images; metrics: accuracy."""
  name = "classify"
  unit = "images"

  def load(self, cfg, workdir: pathlib.Path, init_from_dir: pathlib.Path | None):
    train, val, test, prep = images.load(cfg.data)
    model = dataclasses.replace(cfg.model, num_classes=len(prep.labels),
                                image_height=prep.image_shape[0], image_width=prep.image_shape[1])
    model.__post_init__()  # patch size vs the image shape is only checkable now
    return base.Splits(train, val, test, prep), dataclasses.replace(cfg, model=model)

  def save_artifact(self, splits: base.Splits, workdir: pathlib.Path) -> None:
    splits.artifact.save(workdir)

  def train_iterator(self, split, cfg, process_index: int, process_count: int):
    return images.train_iterator(split, cfg.train.batch_size, cfg.train.seed, cfg.data.max_shift,
                                 process_index, process_count)

  def eval_batches(self, split, cfg, process_index: int, process_count: int) -> list[dict]:
    return images.fixed_batches(split, cfg.train.batch_size, process_index, process_count)

  def loss(self, model, batch: dict, dropout_key, training: bool = True
           ) -> tuple[jax.Array, dict]:
    logits_BC = model(batch["images"], dropout_key=dropout_key).astype(jnp.float32)
    weights_B = batch.get("weights", jnp.ones(batch["labels"].shape, jnp.float32))
    nll_B = -jnp.take_along_axis(jax.nn.log_softmax(logits_BC), batch["labels"][:, None],
                                 axis=-1)[:, 0]
    correct_B = (jnp.argmax(logits_BC, axis=-1) == batch["labels"]).astype(jnp.float32)
    total = jnp.maximum(weights_B.sum(), 1.0)
    return (nll_B * weights_B).sum() / total, {"accuracy": (correct_B * weights_B).sum() / total}

  def units_per_example(self, cfg) -> int:
    return 1

  def flops_per_unit(self, cfg) -> float:
    """3x the forward FLOPs per image, as XLA counts them."""
    graphdef, abstract, _ = state_lib.model_graph(cfg.model)
    x = jax.ShapeDtypeStruct((1, cfg.model.image_height, cfg.model.image_width), jnp.float32)
    cost = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)).lower(abstract, x).compile()
    analysis = cost.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return 3.0 * float(analysis.get("flops", 0.0))

  def finish(self, run, params, step: int) -> dict:
    """Writes the test set's confusion matrix (rows: true label, columns: predicted) as
    DIR/confusion_matrix.png and, as numbers, DIR/confusion_matrix.json; logs nothing."""
    predictions = predict_labels(run.cfg.model, params, run.splits.test.images)
    confusion = np.zeros((run.cfg.model.num_classes,) * 2, np.int64)
    np.add.at(confusion, (run.splits.test.labels, predictions), 1)
    labels = run.splits.artifact.labels
    plot_confusion(confusion, labels, run.workdir / "confusion_matrix.png",
                   f"test set, checkpoint step {step}")
    fileio.atomic_write(run.workdir / "confusion_matrix.json", json.dumps(
        {"step": step, "labels": list(labels), "matrix": confusion.tolist()}))
    return {}


def predict_labels(model_cfg, params, images_NHW: np.ndarray) -> np.ndarray:
  probs = predict_probabilities(model_cfg, params, images_NHW)
  return probs.argmax(axis=-1)


@functools.cache
def _probabilities_fn(model_cfg):
  """One jitted forward per model config (frozen, hashable): repeated predictions reuse it."""
  graphdef, _, _ = state_lib.model_graph(model_cfg)
  return jax.jit(lambda p, x: jax.nn.softmax(nnx.merge(graphdef, p)(x).astype(jnp.float32)))


def predict_probabilities(model_cfg, params, images_NHW: np.ndarray) -> np.ndarray:
  """Softmax over classes for already-normalised images (host arrays in, host array out)."""
  params = jax.device_get(params)  # a small model: predict on one device
  forward = _probabilities_fn(model_cfg)
  return np.asarray(forward(params, jnp.asarray(images_NHW, jnp.float32)))


def plot_confusion(confusion: np.ndarray, labels, path: pathlib.Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 4.5))
  ax.imshow(confusion, cmap="Blues")
  for (i, j), count in np.ndenumerate(confusion):
    if count:
      ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
              color="white" if count > confusion.max() / 2 else "black")
  ax.set_xticks(range(len(labels)), labels)
  ax.set_yticks(range(len(labels)), labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  accuracy = np.trace(confusion) / max(confusion.sum(), 1)
  ax.set_title(f"{title}: accuracy {accuracy:.2%}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
