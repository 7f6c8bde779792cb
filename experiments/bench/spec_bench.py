"""Speculative decoding on trained runs: tokens/second with and without a draft, side by side.

A target run (e.g. the Shakespeare CPU recipe) decodes a fixed prompt set at batch 1 (one
prompt at a time) and at batch 8, plainly, with each `--draft` run (a smaller model trained on
the same text: the same tokenizer) and with n-gram lookup, greedy and at temperature 0.8.
Reported per case: tokens/second, the ratio to plain decoding in the same round (the median of
per-round ratios: the cases run interleaved, so a neighbour's load on the shared CPU hits them
alike), the acceptance rate, and for greedy whether the text equals plain decoding's. Each
draft run also decodes alone (`alone ...`: its own text, its speed as a ratio to the
target's), which is what a draft step costs.

Two prompt sets: `shakespeare` (lines of the validation text) and `repetitive` (each prompt a
passage said twice, then its start again: n-gram lookup's case).

  .venv/bin/python -m experiments.bench.spec_bench --target runs/cpu \
      --draft runs/draft48 --num_draft_tokens 4 --rounds 3
"""
import argparse
import json
import statistics
import time

import jax

from experiments.bench import machine
from treadle.infer import sampler as sampler_lib

SHAKESPEARE = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo", "First Citizen:\nBefore we proceed",
               "KING RICHARD III:\nNow is the winter", "MENENIUS:\nWhat work's, my countrymen",
               "HAMLET:\nTo be, or not", "LADY MACBETH:\nOut, damned", "PROSPERO:\nNow my charms"]
_PASSAGES = ["The king is come, my lord, and all his train.\n",
             "Good night, sweet prince, and flights of angels sing.\n",
             "What light through yonder window breaks? It is the east.\n",
             "Now is the winter of our discontent made glorious.\n"]
REPETITIVE = [p * 2 + p[:12] for p in _PASSAGES] + [p * 3 for p in _PASSAGES]


def _case(sampler, prompts, batch, new_tokens, temperature):
  """Seconds and texts for `prompts` in batches of `batch`; acceptance over all of them."""
  texts, accepted, proposed, seconds = [], 0, 0, 0.0
  for i in range(0, len(prompts), batch):
    chunk = prompts[i:i + batch]
    start = time.perf_counter()
    out = sampler.generate(chunk, max_new_tokens=new_tokens, temperature=temperature,
                           top_k=200, seed=i, ignore_eos=True)
    seconds += time.perf_counter() - start
    texts += [c.text for c in out]
    accepted, proposed = accepted + sampler.acceptance[0], proposed + sampler.acceptance[1]
  return seconds, texts, (accepted / proposed if proposed else None)


def _bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--target", required=True)
  parser.add_argument("--draft", action="append", default=[], help="draft run (repeatable)")
  parser.add_argument("--num_draft_tokens", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batches", default="1,8")
  args = parser.parse_args()
  samplers = {"plain": sampler_lib.Sampler.from_workdir(args.target)}
  for d in args.draft:
    samplers[f"draft {d}"] = sampler_lib.Sampler.from_workdir(
        args.target, draft_workdir=d, num_draft_tokens=args.num_draft_tokens)
  samplers["ngram"] = sampler_lib.Sampler.from_workdir(
      args.target, draft="ngram", num_draft_tokens=args.num_draft_tokens)
  for d in args.draft:
    samplers[f"alone {d}"] = sampler_lib.Sampler.from_workdir(d)
  print(json.dumps({"machine": machine.describe(), "target": args.target,
                    "num_draft_tokens": args.num_draft_tokens, "new_tokens": args.new_tokens,
                    "target_bytes": _bytes(samplers["plain"].params),
                    "draft_bytes": {d: _bytes(samplers[f"draft {d}"].draft.params)
                                    for d in args.draft}}))
  for prompt_set, prompts in (("shakespeare", SHAKESPEARE), ("repetitive", REPETITIVE)):
    for batch in map(int, args.batches.split(",")):
      for temperature in (0.0, 0.8):
        for s in samplers.values():  # compile every shape first
          _case(s, prompts[:batch], batch, args.new_tokens, temperature)
        times = {k: [] for k in samplers}
        for _ in range(args.rounds):
          for name, s in samplers.items():
            seconds, texts, rate = _case(s, prompts, batch, args.new_tokens, temperature)
            times[name].append(seconds)
            if name == "plain":
              plain_texts = texts
            exact = temperature == 0 and not name.startswith("alone")  # alone: its own text
            same = texts == plain_texts if exact else None
            times[name + ".rate"], times[name + ".same"] = rate, same
        tokens = len(prompts) * args.new_tokens
        for name in samplers:
          ratios = [p / t for p, t in zip(times["plain"], times[name])]
          print(json.dumps({
              "prompts": prompt_set, "batch": batch, "temperature": temperature,
              "case": name, "tokens_per_second": tokens / statistics.median(times[name]),
              "speedup": statistics.median(ratios), "acceptance_rate": times[name + ".rate"],
              "greedy_text_identical": times[name + ".same"]}), flush=True)


if __name__ == "__main__":
  main()
