"""Decode tokens/second with a large vocabulary: sampling's filters branched at run time
(decode.sample_token now) against the form that computed them at every step.

The top-k / top-p filters sorted the whole vocabulary. With 65 characters that cost nothing;
with an imported model's 32k-152k tokens the sort costs more than a small decoder's step on
a CPU. decode.sample_token now runs only the argmax when greedy and only the filters that are
on, choosing by `lax.cond` / `lax.switch` on the traced sampling parameters (one compiled
program for every setting), and finds the filters' thresholds by bisection instead of a sort.
"before" is the previous form, kept below as the reference: the sort and every branch
computed, the greedy or sampled token selected afterwards.

Random parameters, a Llama-style decoder (`--layers`, `--width`, `--vocab`), 1-token prompts,
`--new_tokens` cached decoding steps; the two forms run interleaved, one of each per round, and
the table gives medians over rounds and the median per-round ratio.

  .venv/bin/python -m experiments.bench.sampling_head_bench --vocab 32000
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import machine
from treadle.model import decode
from treadle.train import config as config_lib
from treadle.train import state as state_lib

MODES = {"greedy": (0.0, 0, 1.0), "temperature 0.8": (0.8, 0, 1.0),
         "temperature 0.8, top_k 200": (0.8, 200, 1.0),  # treadle-sample's defaults
         "temperature 0.8, top_p 0.95": (0.8, 0, 0.95)}


def sorted_filters(scaled, params):
  """The filters as they were: one sort of the vocabulary gives both thresholds."""
  V = scaled.shape[-1]
  sorted_desc = -jnp.sort(-scaled, axis=-1)
  kth = jnp.take(sorted_desc, jnp.clip(params.top_k - 1, 0, V - 1), axis=-1)[..., None]
  below_kth = lambda x: (params.top_k > 0) & (x < kth)
  scaled = jnp.where(below_kth(scaled), -jnp.inf, scaled)
  sorted_desc = jnp.where(below_kth(sorted_desc), -jnp.inf, sorted_desc)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  kept = jnp.sum((jnp.cumsum(probs, axis=-1) - probs) < params.top_p, axis=-1)
  threshold = jnp.take_along_axis(sorted_desc, jnp.maximum(kept, 1)[..., None] - 1, axis=-1)
  return jnp.where(scaled < threshold, -jnp.inf, scaled)


def sample_token_before(logits_BV, keys_B, params):
  """decode.sample_token as it was: the sort and every branch computed at every step."""
  greedy_B = jnp.argmax(logits_BV.astype(jnp.float32), axis=-1)
  scaled = logits_BV.astype(jnp.float32) / jnp.maximum(params.temperature, 1e-6)
  sampled_B = jax.vmap(jax.random.categorical)(keys_B, sorted_filters(scaled, params))
  return jnp.where(params.temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


class Decoder:
  """Prefill and the cached loop jitted as infer/sampler.py does, traced with `sample`."""

  def __init__(self, args, sample):
    cfg = config_lib.section("model", vocab_size=args.vocab, max_seq_len=256,
                             num_layers=args.layers, num_heads=args.width // 64,
                             embed_dim=args.width, norm="rmsnorm", mlp="swiglu",
                             position="rope", use_bias=False, tie_embeddings=False)
    self.graphdef, _, _ = state_lib.model_graph(cfg)
    self.params = state_lib.random_params(cfg, 0)
    self.vocab, self.sample = args.vocab, sample
    # one token buffer for every call (the compile run too): at least the window, as the
    # sampler lays it out (prompt bucket 64, outputs rounded up to 64)
    self.length = max(cfg.max_seq_len, 64 + -(-args.new_tokens // 64) * 64)
    self._prefill = jax.jit(self._patched(self._prefill_fn), static_argnums=(3,))
    self._loop = jax.jit(self._patched(self._loop_fn), donate_argnums=1)

  def _patched(self, fn):
    def traced(*args):  # runs at trace time only: the compiled program keeps `sample`
      saved, decode.sample_token = decode.sample_token, self.sample
      try:
        return fn(*args)
      finally:
        decode.sample_token = saved
    return traced

  def _prefill_fn(self, params, tokens, pad, prompt_len, key, sampling):
    return decode.prefill(decode.merge(self.graphdef, params), tokens, pad, prompt_len, key,
                          sampling)

  def _loop_fn(self, params, carry, steps, sampling):
    return decode.decode_steps(decode.merge(self.graphdef, params), carry, steps, sampling)

  def seconds(self, batch: int, new_tokens: int, sampling) -> float:
    prompts = np.random.default_rng(0).integers(0, self.vocab, (batch, 1)).tolist()
    tokens, pad = decode.left_pad(prompts, self.length, 64)
    tokens, pad = jnp.asarray(tokens), jnp.asarray(pad)
    start = time.perf_counter()
    carry = self._prefill(self.params, tokens, pad, 64, jax.random.key(0), sampling)
    carry = self._loop(self.params, carry, jnp.int32(new_tokens - 1), sampling)
    jax.block_until_ready(carry)
    return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--batch_sizes", default="1,8")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(machine.describe())
  print(f"Llama-style {args.layers} layers, {args.width} wide, vocab {args.vocab}; "
        f"{args.new_tokens} new tokens; medians of {args.repeats} rounds")
  forms = {"before": Decoder(args, sample_token_before), "now": Decoder(args, decode.sample_token)}
  print(f"{'batch':>5}  {'sampling':<28} {'before tok/s':>12} {'now tok/s':>10} {'now/before':>10}")
  for batch in map(int, args.batch_sizes.split(",")):
    for mode, (t, k, p) in MODES.items():
      sampling = decode.SamplingParams(jnp.float32(t), jnp.int32(k), jnp.float32(p))
      for form in forms.values():
        form.seconds(batch, 2, sampling)  # compiles (the step count is traced)
      rates = {name: [] for name in forms}
      for _ in range(args.repeats):
        for name, form in forms.items():
          rates[name].append(batch * args.new_tokens / form.seconds(batch, args.new_tokens,
                                                                    sampling))
      ratio = statistics.median(n / b for n, b in zip(rates["now"], rates["before"]))
      print(f"{batch:>5}  {mode:<28} {statistics.median(rates['before']):>12.1f} "
            f"{statistics.median(rates['now']):>10.1f} {ratio:>9.2f}x")


if __name__ == "__main__":
  main()
