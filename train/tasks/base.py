"""What every task gives the generic trainer: the Task protocol and the splits it loads."""
import dataclasses
import pathlib
from typing import Any, Protocol

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Any
  val: Any
  test: Any
  artifact: Any  # saved in the workdir for inference: tokenizer, preprocessing stats


class Task(Protocol):
  """A problem beyond the generic loop: its data, loss, metrics and unit of work.

  A task loads and splits its data (and saves what inference needs, e.g. the tokenizer),
  builds input pipelines, defines the loss and metrics, and says how much work one example
  is (tokens for language models, images for classifiers) for throughput and MFU.
  """
  name: str   # the config's `task` value
  unit: str   # what throughput counts: tokens | images
  evaluate_before_training = False  # True: a fresh run logs val_* of its starting model at step 0

  def load(self, cfg, workdir: pathlib.Path, init_from_dir: pathlib.Path | None
           ) -> tuple[Splits, Any]:
    """(splits, the run config with the data-dependent model fields filled in)."""

  def save_artifact(self, splits: Splits, workdir: pathlib.Path) -> None:
    """Writes what inference needs next to the checkpoints."""

  def train_iterator(self, split, cfg, process_index: int, process_count: int):
    """An endless, checkpointable iterator of this process's training rows."""

  def eval_batches(self, split, cfg, process_index: int, process_count: int) -> list[dict]:
    """Fixed evaluation batches (this process's rows)."""

  def loss(self, model, batch: dict, dropout_key, training: bool = True
           ) -> tuple[jax.Array, dict]:
    """(mean loss, extra metrics) of one batch; traced inside the jitted step. training=False
    (evaluation): the loss without training-only terms (MoE router losses)."""

  def units_per_example(self, cfg) -> int:
    """Units of work (see `unit`) in one example."""

  def flops_per_unit(self, cfg) -> float:
    """Training FLOPs per unit, for MFU."""

  def finish(self, run, params, step: int) -> dict:
    """Task-specific end-of-run outputs (files, extra metrics to log)."""

  # Hooks with a default: tasks whose batches need the model (post-training) override them.

  def attach(self, run) -> None:
    """Called once the mesh, shardings and steps exist, before training: device functions
    of the task's own (a reference model, a sampler)."""

  def prepare_batch(self, run, params, batch: dict, step: int) -> tuple[dict, dict]:
    """(the training batch of update `step`, host metrics to log with it) from this step's
    rows as global arrays and the current parameters."""
    return batch, {}

  def prepare_eval(self, run, params, stacked: dict) -> dict:
    """An evaluation set (batches stacked on a leading axis) as the loss reads it."""
    return stacked

  def evaluate(self, run, params, stacked: dict) -> dict | None:
    """Evaluation metrics ("loss": lower is better) computed by the task itself; None = the
    mean loss and loss metrics of the jitted eval step."""
    return None


def numpy_stack(batches: list[dict]) -> dict:
  """Host batches stacked on a new leading axis (one array per key)."""
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}
