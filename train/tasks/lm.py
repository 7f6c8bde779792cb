"""Language modelling as a treadle task: text windows, next-token cross-entropy."""
import dataclasses
import pathlib

import jax

from treadle.data import corpus
from treadle.data import mixture
from treadle.data import tokenizers
from treadle.data import windows
from treadle.model import gpt
from treadle.model import moe
from treadle.train import perf
from treadle.train.tasks import base


class LanguageModeling(base.Task):
  """Next-token prediction on a text corpus (windows of data.seq_len tokens)."""
  name = "lm"
  unit = "tokens"

  def load(self, cfg, workdir: pathlib.Path, init_from_dir: pathlib.Path | None):
    """(splits, config with vocab size and context filled in)."""
    data = corpus.load(cfg.data, _inherited_tokenizer(cfg, workdir, init_from_dir))
    model = dataclasses.replace(cfg.model, vocab_size=data.tokenizer.vocab_size,
                                max_seq_len=cfg.model.max_seq_len or cfg.data.seq_len)
    resolved = dataclasses.replace(cfg, model=model)
    return base.Splits(data.train, data.val, data.test, data.tokenizer), resolved

  def save_artifact(self, splits: base.Splits, workdir: pathlib.Path) -> None:
    tokenizers.save(splits.artifact, workdir)

  def train_iterator(self, split, cfg, process_index: int, process_count: int):
    mixture.log_realised(split.names, split.weights, cfg.train.seed,
                         cfg.train.num_steps * cfg.train.batch_size)
    return windows.train_iterator(split, cfg.data.seq_len, cfg.train.batch_size,
                                  cfg.train.seed, cfg.data.packing, process_index, process_count)

  def eval_batches(self, split, cfg, process_index: int, process_count: int) -> list[dict]:
    return windows.fixed_batches(split, cfg.data.seq_len, cfg.train.batch_size,
                                 cfg.train.eval_batches, cfg.data.packing, process_index,
                                 process_count)

  def loss(self, model, batch: dict, dropout_key, training: bool = True
           ) -> tuple[jax.Array, dict]:
    # packed batches (data.packing) carry segment ids, positions and a loss mask
    logits_BTV, _, stats = model.forward(batch["inputs"], positions_BT=batch.get("positions"),
                                         segment_ids_BT=batch.get("segment_ids"),
                                         dropout_key=dropout_key)
    ce = gpt.cross_entropy(logits_BTV, batch["targets"], batch.get("loss_mask"))
    # an MoE model trains on cross entropy + its router losses (also logged on their own)
    return moe.with_router_losses(model.cfg, ce, {}, stats, training, "cross_entropy")

  def units_per_example(self, cfg) -> int:
    return cfg.data.seq_len

  def flops_per_unit(self, cfg) -> float:
    return perf.flops_per_token(cfg.model, cfg.data.seq_len)

  def finish(self, run, params, step: int) -> dict:
    """Task-specific end-of-run outputs (files, extra metrics); none for language models."""
    return {}


def _inherited_tokenizer(cfg, workdir: pathlib.Path, init_from_dir: pathlib.Path | None):
  """The workdir's own tokenizer on resume; the source run's when fine-tuning; else None."""
  if (workdir / tokenizers.FILENAME).exists():
    return tokenizers.load(workdir)
  if init_from_dir is None:
    return None
  source = tokenizers.load(init_from_dir)
  if source.kind != cfg.data.tokenizer:
    raise ValueError(f"train.init_from={cfg.train.init_from!r}: its tokenizer is "
                     f"{source.kind!r}, this run's data.tokenizer is {cfg.data.tokenizer!r}")
  return source

