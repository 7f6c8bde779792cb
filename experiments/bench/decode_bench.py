"""Decode tokens/second: treadle cached vs full-recompute decoding, beside nanoGPT's sampler.

Two model sizes (`--size`), random parameters: `shakespeare_char` (6 layers, 6 heads, 384
wide, context 256) and `cpu_recipe` (nanoGPT's CPU recipe: 4 layers, 4 heads, 128 wide,
context 64), vocab 65. Weights in `--dtype` (float32, or bfloat16 cast at load as
`treadle-sample --dtype bfloat16` does; nanoGPT stays fp32). Each case samples (temperature
0.8, top_k 200, as nanoGPT's sample.py) from 1-token prompts; 500 new tokens run past the
context, where treadle's cache slides. Prompt and output lengths round up to multiples of 64
as in infer/sampler.py.

Compile time is excluded (a 2-new-token run with the same shapes compiles each case first).
Cases run interleaved, one of each per round; the table gives medians over rounds and the
median of the per-round ratios, so a neighbour's load on the shared CPU hits every case alike.

  .venv/bin/python -m experiments.bench.decode_bench --size cpu_recipe \
      --nanogpt_dir ../peers/nanoGPT --torch_python ../peers/torchvenv/bin/python
"""
import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import machine
from experiments.bench.train_vs_nanogpt import SIZES  # the two nanoGPT recipes
from treadle.model import decode
from treadle.model import quant
from treadle.train import config as config_lib
from treadle.train import state as state_lib

VOCAB = 65
TEMPERATURE, TOP_K = 0.8, 200
_BUCKET = 64  # as infer/sampler.py

# Runs in the peer's own venv: nanoGPT's GPT.generate re-encodes the (cropped) context for
# every new token. argv: nanogpt_dir new_tokens threads seed layers heads width context;
# prints tokens/second.
_NANOGPT_DRIVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import torch
from model import GPT, GPTConfig  # nanoGPT's model.py (sys.path above)
new_tokens, threads, seed, layers, heads, width, context = map(int, sys.argv[2:9])
torch.set_num_threads(threads)
torch.manual_seed(seed)
cfg = GPTConfig(block_size=context, vocab_size=65, n_layer=layers, n_head=heads, n_embd=width,
                dropout=0.0, bias=False)
model = GPT(cfg).eval()  # fp32 on the CPU
idx = torch.zeros((1, 1), dtype=torch.long)
with torch.no_grad():
  model.generate(idx, 8, temperature=0.8, top_k=200)  # warm-up
  start = time.perf_counter()
  out = model.generate(idx, new_tokens, temperature=0.8, top_k=200)
  elapsed = time.perf_counter() - start
assert out.shape == (1, 1 + new_tokens)
print(new_tokens / elapsed)
"""


@dataclasses.dataclass(frozen=True)
class Case:
  key: str    # short id used by the ratios
  name: str
  batch_size: int
  new_tokens: int
  cached: bool = True
  nanogpt: bool = False


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def shape(size: str) -> tuple[int, int, int, int]:
  """(layers, heads, width, context) of a nanoGPT recipe."""
  s = SIZES[size]
  return s.num_layers, s.num_heads, s.embed_dim, s.seq_len


def model_config(size: str, dtype: str):
  layers, heads, width, context = shape(size)
  return config_lib.section("model", vocab_size=VOCAB, max_seq_len=context, num_layers=layers,
                            num_heads=heads, embed_dim=width, compute_dtype=dtype)


class TreadleDecoder:
  """Random parameters; prefill and the two decode loops jitted as infer/sampler.py does."""

  def __init__(self, size: str, dtype: str, seed: int):
    model = model_config(size, dtype)
    self.graphdef, _, _ = state_lib.model_graph(model)
    params = state_lib.random_params(model, seed)  # fp32 master weights, as a run saves them
    self.params = quant.cast_weights(params, model.dtype)  # as Sampler(..., dtype) does
    self.seed = seed
    self.sampling = decode.SamplingParams(jnp.float32(TEMPERATURE), jnp.int32(TOP_K),
                                          jnp.float32(1.0))
    self._prefill = jax.jit(self._prefill_fn, static_argnums=(3,))
    self._steps = {True: jax.jit(self._loop_fn(decode.decode_steps), donate_argnums=1),
                   False: jax.jit(self._loop_fn(decode.recompute_steps), donate_argnums=1)}

  def _prefill_fn(self, params, tokens_BN, pad_B, prompt_len: int, key, sampling):
    model = decode.merge(self.graphdef, params)
    return decode.prefill(model, tokens_BN, pad_B, prompt_len, key, sampling)

  def _loop_fn(self, steps):
    def loop(params, carry, num_steps, sampling):
      return steps(decode.merge(self.graphdef, params), carry, num_steps, sampling)
    return loop

  def _inputs(self, case: Case) -> tuple[jax.Array, jax.Array, int]:
    prompts = np.random.default_rng(self.seed).integers(0, VOCAB, (case.batch_size, 1))
    prompt_len = _BUCKET
    total_len = prompt_len + _round_up(case.new_tokens, _BUCKET)
    tokens, pad = decode.left_pad(prompts.tolist(), total_len, prompt_len)
    return jnp.asarray(tokens), jnp.asarray(pad), prompt_len

  def _generate(self, case: Case, new_tokens: int) -> float:
    """Prefill plus decode loop from fresh inputs; returns the seconds they took."""
    tokens, pad, prompt_len = self._inputs(case)
    jax.block_until_ready((tokens, pad))
    start = time.perf_counter()
    carry = self._prefill(self.params, tokens, pad, prompt_len, jax.random.key(self.seed),
                          self.sampling)  # samples the first new token
    carry = self._steps[case.cached](self.params, carry, jnp.int32(new_tokens - 1), self.sampling)
    jax.block_until_ready(carry)
    elapsed = time.perf_counter() - start
    if int(carry.cur) != prompt_len + new_tokens - 1:
      raise RuntimeError(f"{case.name}: generated {int(carry.cur) - prompt_len + 1} tokens, "
                         f"expected {new_tokens}")
    return elapsed

  def compile(self, case: Case) -> None:
    """Same shapes, two new tokens: the step count is traced, so this compiles everything."""
    self._generate(case, 2)

  def tokens_per_second(self, case: Case) -> float:
    return case.batch_size * case.new_tokens / self._generate(case, case.new_tokens)


def nanogpt_tokens_per_second(args: argparse.Namespace, case: Case) -> float:
  """One timed nanoGPT generate in a fresh peer process (its start-up is not timed)."""
  dims = [str(n) for n in shape(args.size)]
  out = subprocess.run([args.torch_python, "-c", _NANOGPT_DRIVER, args.nanogpt_dir,
                        str(case.new_tokens), str(args.cores), str(args.seed), *dims],
                       check=True, capture_output=True, text=True)
  return float(out.stdout.strip().splitlines()[-1])


def cases(args: argparse.Namespace) -> list[Case]:
  b = args.batch_size
  listed = [Case("cached_b1", "treadle cached", 1, args.new_tokens),
            Case(f"cached_b{b}", "treadle cached", b, args.new_tokens),
            Case("recompute_b1", "treadle recompute", 1, args.recompute_tokens, cached=False),
            Case(f"recompute_b{b}", "treadle recompute", b, args.recompute_tokens, cached=False)]
  if args.nanogpt_dir:
    listed.append(Case("nanogpt_b1", "nanoGPT generate", 1, args.new_tokens, cached=False,
                       nanogpt=True))
  return listed


def measure(args: argparse.Namespace) -> dict[Case, list[float]]:
  """Compiles each treadle case, then runs every case once per round."""
  decoder = TreadleDecoder(args.size, args.dtype, args.seed)
  listed = cases(args)
  for case in listed:
    if not case.nanogpt:
      decoder.compile(case)
  samples: dict[Case, list[float]] = {case: [] for case in listed}
  for _ in range(args.repeats):
    for case in listed:
      rate = (nanogpt_tokens_per_second(args, case) if case.nanogpt
              else decoder.tokens_per_second(case))
      samples[case].append(rate)
  return samples


def ratios(samples: dict[Case, list[float]], batch_size: int) -> dict[str, float]:
  """Median over rounds of each per-round ratio of two cases' tokens/s."""
  by_key = {case.key: rates for case, rates in samples.items()}
  b = batch_size
  pairs = {f"cached_b{b} / cached_b1 (issue: >= 8)": (f"cached_b{b}", "cached_b1"),
           "cached_b1 / recompute_b1": ("cached_b1", "recompute_b1"),
           f"cached_b{b} / recompute_b{b}": (f"cached_b{b}", f"recompute_b{b}"),
           "cached_b1 / nanogpt_b1 (issue: >= 20)": ("cached_b1", "nanogpt_b1"),
           "recompute_b1 / nanogpt_b1": ("recompute_b1", "nanogpt_b1")}
  return {name: statistics.median(n / d for n, d in zip(by_key[num], by_key[den]))
          for name, (num, den) in pairs.items() if num in by_key and den in by_key}


def report(args: argparse.Namespace, samples: dict[Case, list[float]], load: tuple) -> dict:
  cases_out = [{"key": c.key, "name": c.name, "batch_size": c.batch_size,
                "new_tokens": c.new_tokens, "tokens_per_second": statistics.median(rates),
                "samples": rates} for c, rates in samples.items()]
  return {"date": datetime.date.today().isoformat(), "size": args.size, "dtype": args.dtype,
          "machine": machine.describe(),
          "cpus": os.cpu_count(), "cores_used": args.cores, "load_average_before_after": load,
          "jax": jax.__version__, "repeats": args.repeats, "cases": cases_out,
          "ratios": ratios(samples, args.batch_size)}


def print_table(result: dict) -> None:
  layers, heads, width, context = shape(result["size"])
  print(f"decode tokens/s: {result['size']} ({layers}L/{heads}H/{width}D, context {context}), "
        f"treadle weights {result['dtype']}, {result['cores_used']} of {result['cpus']} cores, "
        f"{result['machine']}, jax {result['jax']}, median of {result['repeats']} rounds, "
        f"{result['date']}")
  if result["dtype"] == "bfloat16" and not machine.has_native_bf16():
    print("note: this CPU lacks AVX512_BF16: XLA:CPU converts bf16 dots to fp32, slower than "
          "--dtype float32; this machine's figures are the float32 run's")
  print(f"{'case':20} {'batch':>5} {'new tokens':>10} {'tokens/s':>10}   rounds")
  for c in result["cases"]:
    rounds = " ".join(f"{s:.1f}" for s in c["samples"])
    print(f"{c['name']:20} {c['batch_size']:5d} {c['new_tokens']:10d} "
          f"{c['tokens_per_second']:10.1f}   {rounds}")
  for name, value in result["ratios"].items():
    print(f"  {name:44} {value:6.1f}x")
  print(f"load average before/after: {result['load_average_before_after']}")


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", choices=sorted(SIZES), default="shakespeare_char")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="treadle's weights, cast at load (nanoGPT stays fp32)")
  p.add_argument("--new_tokens", type=int, default=500)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--recompute_tokens", type=int, default=32,
                 help="recompute re-encodes a full window per token, so its rate is flat: "
                      "fewer tokens measure the same rate sooner")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--cores", type=int, default=1,
                 help="pin this process and the peer to this many cores (threads alike)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--nanogpt_dir", default="", help="a nanoGPT checkout (its model.py)")
  p.add_argument("--torch_python", default="python3", help="a python with torch for nanoGPT")
  p.add_argument("--json", action="store_true", help="print JSON instead of a table")
  return p.parse_args()


def main() -> None:
  args = parse_args()
  # before JAX starts its CPU client: XLA sizes its thread pool from the affinity mask, and
  # two threads per process collapse when a neighbour holds one of the two cores
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  load_before = os.getloadavg()[0]
  samples = measure(args)
  result = report(args, samples, (round(load_before, 2), round(os.getloadavg()[0], 2)))
  if args.json:
    print(json.dumps(result, indent=1))
  else:
    print_table(result)


if __name__ == "__main__":
  main()
