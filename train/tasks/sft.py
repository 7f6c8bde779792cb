"""Supervised fine-tuning: next-token loss on the answers only (prompt tokens carry no
gradient), rows of prompt/completion pairs or chat messages."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from treadle.data import post
from treadle.train import perf
from treadle.train.tasks import base
from treadle.train.tasks import post as post_lib


def examples(renderer: post.Renderer, rows: list, seq_len: int, path: str) -> list[tuple]:
  """(ids, mask) per usable row; rows longer than seq_len + 1 tokens are skipped, counted."""
  out, too_long, unlearned = [], 0, 0
  for number, row in rows:
    ids, mask = post.sft_example(renderer, row, f"{path}:{number}")
    if len(ids) > seq_len + 1:
      too_long += 1
    elif not mask[1:].any():  # the first token is never a target
      unlearned += 1
    else:
      out.append((ids, mask))
  post.report_skipped(f"data.path={path!r}", too_long, len(rows),
                      f"longer than data.seq_len + 1 = {seq_len + 1} tokens")
  post.report_skipped(f"data.path={path!r}", unlearned, len(rows), "no answer token to learn")
  return out


def unpacked(examples_: list[tuple], seq_len: int) -> dict:
  """One example per row, right-padded (padding has mask 0)."""
  return {"inputs": post.right_pad([i[:-1] for i, _ in examples_], seq_len),
          "targets": post.right_pad([i[1:] for i, _ in examples_], seq_len),
          "loss_mask": post.right_pad([m[1:] for _, m in examples_], seq_len)}


def packed(examples_: list[tuple], seq_len: int) -> dict:
  """Examples laid end to end, in order, into rows of seq_len positions (a new row when the
  next does not fit); segment ids keep attention and positions within each example."""
  rows, row = [], []
  for ids, mask in examples_:
    if sum(len(i) - 1 for i, _ in row) + len(ids) - 1 > seq_len:
      rows.append(row)
      row = []
    row.append((ids, mask))
  rows.append(row)
  out = {k: np.zeros((len(rows), seq_len), np.int32)
         for k in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}
  for r, members in enumerate(rows):
    at = 0
    for segment, (ids, mask) in enumerate(members, 1):
      n = len(ids) - 1
      span = slice(at, at + n)
      out["inputs"][r, span], out["targets"][r, span] = ids[:-1], ids[1:]
      out["loss_mask"][r, span] = mask[1:]
      out["segment_ids"][r, span], out["positions"][r, span] = segment, np.arange(n)
      at += n
  return out


class SupervisedFineTuning(post_lib.PostTrainingTask):
  """Cross-entropy on completion / assistant tokens, token-weighted across micro-batches."""
  name = "sft"

  def load(self, cfg, workdir: pathlib.Path, init_from_dir: pathlib.Path | None):
    cfg, tokenizer = post_lib.inherit(cfg, workdir, init_from_dir)
    data = cfg.data
    rows = post.read_jsonl(data.path, "data.path")
    usable = examples(post.Renderer(tokenizer), rows, data.seq_len, data.path)
    parts = post.split_rows(len(usable), data.val_fraction, data.test_fraction,
                            data.split_seed, f"data.path={data.path!r}")
    build = packed if data.packing else unpacked
    splits = [build([usable[i] for i in part], data.seq_len) for part in parts]
    return base.Splits(*splits, tokenizer), cfg

  def loss(self, model, batch: dict, dropout_key, training: bool = True
           ) -> tuple[jax.Array, dict]:
    mask = batch["loss_mask"].astype(jnp.float32)
    if "weights" in batch:  # evaluation padding rows count nowhere
      mask = mask * batch["weights"][:, None]
    logp, stats = post_lib.policy_logprobs(model, batch["inputs"], batch["targets"],
                                           batch.get("positions"), batch.get("segment_ids"),
                                           dropout_key)
    tokens = mask.sum()
    # the mean over this batch's answer tokens; "weight" makes accumulation and evaluation
    # combine batches by their token counts (an update of 2 micro-batches = one batch of both)
    objective = -(logp * mask).sum() / jnp.maximum(tokens, 1.0), {"weight": tokens}
    return post_lib.with_router_losses(model, objective, stats, training)

  def units_per_example(self, cfg) -> int:
    return cfg.data.seq_len

  def flops_per_unit(self, cfg) -> float:
    return perf.flops_per_token(cfg.model, cfg.data.seq_len)
