"""Direct preference optimisation (Rafailov et al. 2023): raise the policy's log-likelihood
ratio to the frozen reference on the chosen answer over the rejected one.

loss = -log sigmoid(z), z = beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))),
log-probabilities summed over the answer's tokens. z is the implicit reward margin; the share
of pairs with z > 0 is the reward accuracy. The reference's log-probabilities are computed
outside the jitted step (train/tasks/post.Reference) and travel with the batch.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from treadle.data import post
from treadle.train import perf
from treadle.train.tasks import base
from treadle.train.tasks import post as post_lib

SIDES = ("chosen", "rejected")


def pairs(renderer: post.Renderer, rows: list, seq_len: int, path: str) -> dict:
  """Token arrays of the usable pairs: {side}_inputs/targets/mask [N, seq_len] (mask 1 on the
  answer's tokens). Pairs too long, or whose answers are the same, are skipped and counted."""
  kept, too_long, same = [], 0, 0
  for number, row in rows:
    prompt, chosen, rejected = post.preference_example(renderer, row, f"{path}:{number}")
    if len(prompt) + max(len(chosen), len(rejected)) > seq_len + 1:
      too_long += 1
    elif np.array_equal(chosen, rejected):
      same += 1
    else:
      kept.append((prompt, chosen, rejected))
  where = f"data.path={path!r}"
  post.report_skipped(where, too_long, len(rows), f"longer than data.seq_len + 1 = {seq_len + 1}")
  post.report_skipped(where, same, len(rows), "chosen == rejected (no preference to learn)")
  out = {}
  for side, answers in zip(SIDES, zip(*[(c, r) for _, c, r in kept]) if kept else ((), ())):
    seqs = [np.concatenate([p, a]) for (p, _, _), a in zip(kept, answers)]
    masks = [np.concatenate([np.zeros(len(p)), np.ones(len(a))]) for (p, _, _), a in
             zip(kept, answers)]
    out[f"{side}_inputs"] = post.right_pad([s[:-1] for s in seqs], seq_len)
    out[f"{side}_targets"] = post.right_pad([s[1:] for s in seqs], seq_len)
    out[f"{side}_mask"] = post.right_pad([m[1:] for m in masks], seq_len)
  return out


def answer_logprobs(model, batch: dict, dropout_key=None) -> tuple[jax.Array, jax.Array]:
  """(log p(chosen | prompt), log p(rejected | prompt)) per pair, one forward of both."""
  return _answer_logprobs_and_stats(model, batch, dropout_key)[:2]


def _answer_logprobs_and_stats(model, batch: dict, dropout_key=None):
  """answer_logprobs and the MoE router statistics of the forward (None if dense)."""
  both = lambda name: jnp.concatenate([batch[f"{s}_{name}"] for s in SIDES])
  logp, stats = post_lib.policy_logprobs(model, both("inputs"), both("targets"),
                                         dropout_key=dropout_key)
  chosen, rejected = jnp.split((logp * both("mask")).sum(-1), 2)
  return chosen, rejected, stats


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, weights):
  """(mean loss, metrics) over the pairs weighted by `weights` (0 = padding)."""
  z = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
  count = jnp.maximum(weights.sum(), 1.0)
  mean = lambda x: (x * weights).sum() / count
  return mean(-jax.nn.log_sigmoid(z)), {
      "reward_accuracy": mean((z > 0).astype(jnp.float32)), "reward_margin": mean(z),
      "weight": weights.sum()}


class PreferenceOptimization(post_lib.PostTrainingTask):
  """DPO on {prompt, chosen, rejected} rows against the frozen init_from model."""
  name = "dpo"

  def __init__(self):
    self.reference = None
    self.beta = None

  def load(self, cfg, workdir: pathlib.Path, init_from_dir: pathlib.Path | None):
    cfg, tokenizer = post_lib.inherit(cfg, workdir, init_from_dir)
    data = cfg.data
    rows = post.read_jsonl(data.path, "data.path")
    arrays = pairs(post.Renderer(tokenizer), rows, data.seq_len, data.path)
    count = len(arrays["chosen_inputs"])
    parts = post.split_rows(count, data.val_fraction, data.test_fraction, data.split_seed,
                            f"data.path={data.path!r}")
    self.beta = cfg.dpo.beta
    return base.Splits(*(post.take(arrays, p) for p in parts), tokenizer), cfg

  def attach(self, run) -> None:
    self.reference = post_lib.Reference(run, answer_logprobs)

  def prepare_batch(self, run, params, batch: dict, step: int) -> tuple[dict, dict]:
    chosen, rejected = self.reference.logprobs(params, batch)
    return {**batch, "ref_chosen": chosen, "ref_rejected": rejected}, {}

  def prepare_eval(self, run, params, stacked: dict) -> dict:
    chosen, rejected = self.reference.stacked_logprobs(params, stacked)
    return {**stacked, "ref_chosen": chosen, "ref_rejected": rejected}

  def loss(self, model, batch: dict, dropout_key, training: bool = True
           ) -> tuple[jax.Array, dict]:
    chosen, rejected, stats = _answer_logprobs_and_stats(model, batch, dropout_key)
    weights = batch.get("weights", jnp.ones_like(chosen))
    objective = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"],
                         self.beta, weights)
    return post_lib.with_router_losses(model, objective, stats, training)

  def units_per_example(self, cfg) -> int:
    return 2 * cfg.data.seq_len

  def flops_per_unit(self, cfg) -> float:
    return perf.flops_per_token(cfg.model, cfg.data.seq_len)
