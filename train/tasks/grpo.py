"""Group relative policy optimisation (Shao et al. 2024) with a reward program.

Each step: sample rl.group_size completions of each of the step's prompts with the KV-cache
decoder (model/decode.py) jitted on the current, sharded parameters; score them on the host
with rl.reward; advantages are the rewards normalised within each group; one clipped
policy-gradient update on the completion tokens (plus rl.kl_coef times the k3 estimate of the
KL to the init_from model). The sampling key of step s is fold_in(seed stream, s), so a
resumed run samples what the straight run did.

Each sampled batch makes one update, so the policy that sampled is the one updated: the
ratio is 1 at the update (its gradient is the policy gradient) and rl.clip_eps bounds it only
when old log-probabilities come with the batch ("old_logp", as tests give them).
"""
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from treadle.data import post
from treadle.data import streaming
from treadle.data import tokenizers
from treadle.model import axes
from treadle.model import decode
from treadle.train import mesh as mesh_lib
from treadle.train import perf
from treadle.train import rewards
from treadle.train import state as state_lib
from treadle.train.tasks import base
from treadle.train.tasks import post as post_lib

_SAMPLING_STREAM = 0x5A3  # folded into the seed: sampling keys apart from dropout's


def group_advantages(rewards_: np.ndarray, group_size: int) -> np.ndarray:
  """(reward - group mean) / (group std + 1e-4), per consecutive group of `group_size`."""
  groups = rewards_.reshape(-1, group_size)
  centred = groups - groups.mean(axis=1, keepdims=True)
  return (centred / (groups.std(axis=1, keepdims=True) + 1e-4)).reshape(-1).astype(np.float32)


def grpo_objective(logp, old_logp, ref_logp, advantages, mask, clip_eps: float, kl_coef: float):
  """(loss, metrics): the clipped surrogate, negated, plus kl_coef * k3 KL to the reference
  (none when `ref_logp` is None), averaged over the completion tokens (`mask`) of the batch.
  Arrays are [B, T]; advantages [B]."""
  ratio = jnp.exp(logp - old_logp)
  adv = advantages[:, None]
  surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
  tokens = mask.sum()
  mean = lambda x: (x * mask).sum() / jnp.maximum(tokens, 1.0)
  clipped = (ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)
  metrics = {"clip_fraction": mean(clipped.astype(jnp.float32)), "weight": tokens}
  if ref_logp is None:
    return mean(-surrogate), metrics
  log_ref_ratio = ref_logp - logp
  kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0  # >= 0, unbiased for KL(policy || ref)
  return mean(-surrogate + kl_coef * kl), {**metrics, "kl": mean(kl)}


def completion_lengths(completions: np.ndarray, stop_ids) -> np.ndarray:
  """Tokens of each sampled completion, through its first stop id (else all of them)."""
  stops = np.isin(completions, list(stop_ids)) if len(stop_ids) else np.zeros_like(completions, bool)
  return np.where(stops.any(1), stops.argmax(1) + 1, completions.shape[1]).astype(np.int32)


def training_batch(tokens: np.ndarray, pad: np.ndarray, prompt_len: int, lengths: np.ndarray,
                   advantages: np.ndarray) -> dict:
  """Sampled sequences [B, P + M] (left-padded prompts) as next-token rows over [P + M - 1]
  positions; the loss mask covers each completion's tokens."""
  T = tokens.shape[1] - 1
  t = np.arange(T)[None, :]
  first = prompt_len - 1  # the target at position P-1 is the first completion token
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_mask": ((t >= first) & (t < first + lengths[:, None])).astype(np.float32),
          "positions": np.maximum(t - pad[:, None], 0).astype(np.int32),
          "segment_ids": (t >= pad[:, None]).astype(np.int32),
          "advantages": advantages}


class GroupRelativePolicyOptimization(post_lib.PostTrainingTask):
  """GRPO on rl.prompts with the rl.reward program."""
  name = "grpo"

  def __init__(self):
    self.rl, self.tokenizer = None, None
    self.examples = []      # (prompt text, the row) per usable prompt; arrays hold indices
    self.prompt_len = 0

  # -- data ------------------------------------------------------------------------------

  def load(self, cfg, workdir: pathlib.Path, init_from_dir: pathlib.Path | None):
    cfg, tokenizer = post_lib.inherit(cfg, workdir, init_from_dir)
    self.rl, self.tokenizer = cfg.rl, tokenizer
    self.reward = rewards.load(cfg.rl.reward)
    rows = post.read_jsonl(cfg.rl.prompts, "rl.prompts")
    renderer, room = post.Renderer(tokenizer), cfg.model.max_seq_len - cfg.rl.max_new_tokens
    if room < 1:
      raise ValueError(f"rl.max_new_tokens={cfg.rl.max_new_tokens} leaves no room for a prompt "
                       f"in the model's context (max_seq_len {cfg.model.max_seq_len})")
    ids, too_long = [], 0
    for number, row in rows:
      where = f"{cfg.rl.prompts}:{number}"
      text = post.prompt_text(renderer, row, where)
      encoded = renderer.encode(text, where)
      if len(encoded) > room:
        too_long += 1
        continue
      self.examples.append((text, row))
      ids.append(encoded)
    post.report_skipped(f"rl.prompts={cfg.rl.prompts!r}", too_long, len(rows),
                        f"longer than max_seq_len - rl.max_new_tokens = {room} tokens")
    self.prompt_len = max((len(i) for i in ids), default=1)
    tokens, pad = decode.left_pad(ids, self.prompt_len, self.prompt_len)
    arrays = {"prompt": tokens, "pad": pad, "index": np.arange(len(ids), dtype=np.int32)}
    parts = post.split_rows(len(ids), cfg.data.val_fraction, cfg.data.test_fraction,
                            cfg.data.split_seed, f"rl.prompts={cfg.rl.prompts!r}")
    return base.Splits(*(post.take(arrays, p) for p in parts), tokenizer), cfg

  # -- device functions --------------------------------------------------------------------

  def attach(self, run) -> None:
    cfg = run.cfg
    self.stop_ids = tokenizers.stop_token_ids(self.tokenizer)
    self._stop_K = decode.stop_ids(self.stop_ids)
    self._seed_key = jax.random.fold_in(jax.random.key(cfg.train.seed), _SAMPLING_STREAM)
    graphdef = state_lib.model_graph(cfg.model)[0]
    rules = mesh_lib.rules(cfg.mesh.rules)
    replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
    new = cfg.rl.max_new_tokens

    def generate(params, prompt_BP, pad_B, index_B, key, temperature, group: int):
      with axes.activation_rules(rules, run.mesh):
        model = nnx.merge(graphdef, params)
        # at least half a window of slots: the decoder's cache slide (never reached, as
        # prompt + completion fit the context) is traced with a half-window slice
        width = max(prompt_BP.shape[1] + new, cfg.model.max_seq_len // 2)
        tokens = jnp.pad(jnp.repeat(prompt_BP, group, 0),
                         ((0, 0), (0, width - prompt_BP.shape[1])))
        pad = jnp.repeat(pad_B, group, 0)
        sampling = decode.SamplingParams(temperature, jnp.int32(0), jnp.float32(1.0))
        carry = decode.prefill(model, tokens, pad, prompt_BP.shape[1], key, sampling, 0,
                               self._stop_K)
        carry = decode.decode_steps(model, carry, jnp.int32(new - 1), sampling)
        return carry.tokens_BN[:, :prompt_BP.shape[1] + new], pad, jnp.repeat(index_B, group, 0)
    self._generate = jax.jit(generate, static_argnums=6, out_shardings=replicated)
    self.reference = None
    if cfg.rl.kl_coef > 0:
      self.reference = post_lib.Reference(run, lambda model, b: post_lib.token_logprobs(
          model, b["inputs"], b["targets"], b["positions"], b["segment_ids"]))

  def _sample(self, params, batch: dict, key, temperature: float, group: int):
    """Host copies of (sequences [B*group, P+M], pad, example index, completion lengths)."""
    out = self._generate(params, batch["prompt"], batch["pad"], batch["index"], key,
                         jnp.float32(temperature), group)
    tokens, pad, index = (np.asarray(x.addressable_data(0)) for x in out)
    return tokens, pad, index, completion_lengths(tokens[:, self.prompt_len:], self.stop_ids)

  def _rewards(self, tokens, index, lengths, where: str) -> np.ndarray:
    values = []
    for row, (sequence, i, n) in enumerate(zip(tokens, index, lengths)):
      prompt, example = self.examples[int(i)]
      text = streaming.completion_text(self.tokenizer, sequence[:self.prompt_len],
                                       sequence[self.prompt_len:self.prompt_len + n], int(n),
                                       stop_ids=self.stop_ids).text
      values.append(rewards.score(self.reward, self.rl.reward, prompt, text, example,
                                  f"{where}, prompt row {int(i)}"))
    return np.asarray(values, np.float64)

  def prepare_batch(self, run, params, batch: dict, step: int) -> tuple[dict, dict]:
    """This step's sampled groups, scored, as the training batch (global arrays)."""
    start = time.perf_counter()
    key = jax.random.fold_in(self._seed_key, step)
    tokens, pad, index, lengths = self._sample(params, batch, key, self.rl.temperature,
                                               self.rl.group_size)
    sampled = time.perf_counter() - start
    scores = self._rewards(tokens, index, lengths, f"step {step}")
    host = training_batch(tokens, pad, self.prompt_len, lengths,
                          group_advantages(scores, self.rl.group_size))
    out = {k: jax.make_array_from_callback(v.shape, run.batch_sharding,
                                           lambda idx, v=v: v[idx]) for k, v in host.items()}
    if self.reference is not None:
      out["ref_logp"] = self.reference.logprobs(params, out)
    return out, {"train_reward_mean": float(scores.mean()),
                 "train_completion_tokens": float(lengths.mean()),
                 "sampled_tokens_per_second": float(lengths.sum() / max(sampled, 1e-9))}

  def evaluate(self, run, params, stacked: dict) -> dict:
    """Mean reward of greedy completions of the held-out prompts; loss = its negation (lower
    is better, as early stopping and the best checkpoint read it)."""
    total, count = 0.0, 0.0
    weights = np.asarray(multihost_utils.process_allgather(stacked["weights"], tiled=True))
    for i in range(weights.shape[0]):
      batch = {k: stacked[k][i] for k in ("prompt", "pad", "index")}
      tokens, _, index, lengths = self._sample(params, batch, jax.random.key(0), 0.0, 1)
      real = weights[i] > 0
      scores = self._rewards(tokens[real], index[real], lengths[real], "evaluation")
      total, count = total + scores.sum(), count + real.sum()
    mean = total / max(count, 1.0)
    return {"loss": 0.0 - mean, "reward_mean": mean}  # 0.0 - : no "-0.0" in logs

  # -- the update ------------------------------------------------------------------------

  def loss(self, model, batch: dict, dropout_key, training: bool = True
           ) -> tuple[jax.Array, dict]:
    logp, stats = post_lib.policy_logprobs(model, batch["inputs"], batch["targets"],
                                           batch["positions"], batch["segment_ids"], dropout_key)
    old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
    ref = batch.get("ref_logp")  # present when rl.kl_coef > 0: the KL is then measured
    objective = grpo_objective(logp, old, ref, batch["advantages"], batch["loss_mask"],
                               self.rl.clip_eps, self.rl.kl_coef)
    return post_lib.with_router_losses(model, objective, stats, training)

  def units_per_example(self, cfg) -> int:
    return cfg.rl.group_size * (self.prompt_len + cfg.rl.max_new_tokens - 1)

  def flops_per_unit(self, cfg) -> float:
    return perf.flops_per_token(cfg.model, self.prompt_len + cfg.rl.max_new_tokens - 1)
