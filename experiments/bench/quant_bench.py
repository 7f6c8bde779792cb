"""int8 weight-only against float32 on a trained run, side by side in one process.

For the run `--workdir` (float32 checkpoint) it loads two Samplers on one device, float32 and
`quantize="int8"` (as `treadle-sample --quantize int8`), and measures:
  - resident parameter bytes (Sampler.weights_bytes, what `--json` prints);
  - validation loss over the run's whole validation split, cut into non-overlapping windows
    of the model's context (the text between data.val_fraction's bounds, as data/corpus.py
    cuts one document: for a character tokenizer exactly the run's val tokens);
  - decode tokens/s at batch 1 and 32 (temperature 0.8, top_k 200, `--new_tokens`, compile
    excluded; the two models alternate within each round and the table gives medians over
    `--rounds` so the shared CPU's load hits both alike);
  - greedy agreement on a fixed prompt set: `--prompts` prompts (32-character slices of the
    validation text at even offsets) continued `--greedy_tokens` tokens each with both
    models; the share of continuations identical and the mean length of the matching prefix.

With `--random_size shakespeare_char` the models are instead random weights at nanoGPT's
shakespeare_char size (6 layers, 6 heads, 384 wide, context 256: 10.7 M parameters, 43 MB in
float32, more than this CPU's caches hold; the run's tokenizer and config otherwise): speed
and bytes only (random weights have no meaningful loss or greedy text).

  .venv/bin/python -m experiments.bench.quant_bench --workdir runs/moe/dense_s1337 \
      --data ../shared/data/tinyshakespeare/input.txt [--random_size shakespeare_char]
"""
import argparse
import dataclasses
import datetime
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import machine
from treadle.infer import sampler as sampler_lib
from treadle.model import decode
from treadle.model import gpt
from treadle.train import state as state_lib

RANDOM_SIZES = {"shakespeare_char": dict(num_layers=6, num_heads=6, embed_dim=384,
                                         max_seq_len=256)}


def random_models(workdir: str, size: str) -> dict:
  """float32 and int8 Samplers of random weights at `size`, the run's tokenizer and config."""
  run = sampler_lib.Sampler.from_workdir(workdir, mesh_shape=(1, 1, 1),
                                         devices=jax.devices()[:1])
  cfg = dataclasses.replace(run.cfg, model=dataclasses.replace(run.cfg.model,
                                                               **RANDOM_SIZES[size]))
  params = jax.device_put(state_lib.random_params(cfg.model, 0), jax.devices()[0])
  return {q or "float32": sampler_lib.Sampler(cfg, run.tokenizer, params, run.mesh, 0,
                                              quantize=q) for q in (None, "int8")}


def val_tokens(sampler, text: str) -> np.ndarray:
  """The validation slice of `text` (data/corpus._contiguous's bounds, in characters),
  encoded by the run's tokenizer."""
  data = sampler.cfg.data
  n = len(text)
  n_test, n_val = int(n * data.test_fraction), int(n * data.val_fraction)
  return np.asarray(sampler.tokenizer.encode(text[n - n_val - n_test:n - n_test]), np.int32)


def val_loss(sampler, tokens: np.ndarray, batch: int = 64) -> float:
  """Mean next-token loss over non-overlapping windows of the model's context."""
  window = sampler.window
  count = (len(tokens) - 1) // window
  inputs = tokens[:count * window].reshape(count, window)
  targets = tokens[1:count * window + 1].reshape(count, window)

  @jax.jit
  def loss_sum(params, x, y):
    logits, _ = decode.merge(sampler.graphdef, params)(x)
    return gpt.cross_entropy(logits, y) * y.size

  total = 0.0
  for start in range(0, count, batch):
    x, y = inputs[start:start + batch], targets[start:start + batch]
    total += float(loss_sum(sampler.params, x, y))
  return total / (count * window)


def tokens_per_second(sampler, prompts, new_tokens: int) -> float:
  args = dict(max_new_tokens=new_tokens, temperature=0.8, top_k=200, ignore_eos=True)
  start = time.perf_counter()
  out = sampler.generate(prompts, seed=0, **args)
  seconds = time.perf_counter() - start
  return sum(len(c.token_ids) for c in out) / seconds


def agreement(fp32, int8, prompts, new_tokens: int) -> dict:
  args = dict(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
  a = [c.token_ids for c in fp32.generate(prompts, **args)]
  b = [c.token_ids for c in int8.generate(prompts, **args)]
  prefixes = [next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), len(p))
              for p, q in zip(a, b)]
  return {"identical": sum(p == q for p, q in zip(a, b)) / len(a),
          "mean_matching_prefix": statistics.mean(prefixes), "tokens": new_tokens,
          "prompts": len(prompts)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data", required=True, help="the text the run was trained on")
  parser.add_argument("--new_tokens", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--prompts", type=int, default=20)
  parser.add_argument("--greedy_tokens", type=int, default=100)
  parser.add_argument("--skip_speed", action="store_true")
  parser.add_argument("--random_size", choices=sorted(RANDOM_SIZES))
  args = parser.parse_args()
  one = dict(mesh_shape=(1, 1, 1), devices=jax.devices()[:1])
  if args.random_size:
    models = random_models(args.workdir, args.random_size)
  else:
    models = {"float32": sampler_lib.Sampler.from_workdir(args.workdir, **one),
              "int8": sampler_lib.Sampler.from_workdir(args.workdir, quantize="int8", **one)}
  text = open(args.data, encoding="utf-8").read()
  val = val_tokens(models["float32"], text)
  val_text = models["float32"].tokenizer.decode(val.tolist())
  offsets = np.linspace(0, len(val_text) - 64, args.prompts).astype(int)
  prompts = [val_text[o:o + 32] for o in offsets]
  result = {"workdir": args.workdir, "step": models["float32"].step,
            "cpu": machine.describe(), "jax": jax.__version__,
            "date": datetime.date.today().isoformat(), "load_avg_start": os.getloadavg()[0]}
  result["size"] = args.random_size or "the run's"
  for name, s in models.items():
    result[name] = {"weights_bytes": s.weights_bytes}
    if not args.random_size:
      result[name].update(val_loss=val_loss(s, val), val_tokens=int(len(val)))
  if not args.random_size:
    result["greedy_agreement"] = agreement(models["float32"], models["int8"], prompts,
                                           args.greedy_tokens)
  if not args.skip_speed:
    for batch in (1, 32):
      batch_prompts = (prompts * 2)[:batch]
      for s in models.values():
        s.compile(batch_prompts, args.new_tokens)
      rates = {name: [] for name in models}
      for _ in range(args.rounds):
        for name, s in models.items():
          rates[name].append(tokens_per_second(s, batch_prompts, args.new_tokens))
      for name in models:
        result[name][f"tokens_per_second_batch{batch}"] = statistics.median(rates[name])
        result[name][f"rounds_batch{batch}"] = [round(r, 1) for r in rates[name]]
      result[f"int8_over_float32_batch{batch}"] = statistics.median(
          i / f for i, f in zip(rates["int8"], rates["float32"]))  # per round
  result["load_avg_end"] = os.getloadavg()[0]
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
