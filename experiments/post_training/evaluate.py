"""Held-out measurements of a treadle run on the addition task: greedy exact match, the
completion's NLL per token, and DPO's implicit reward accuracy.

  python experiments/post_training/evaluate.py RUN FILE [--reference REF] [--label NAME]

FILE rows {"prompt", "completion", "answer"} (heldout.jsonl) give
  exact_match     share of prompts whose greedy completion (up to --max_new_tokens, ending
                  at the end-of-text id) is the answer, scored by reward.exact_match
  completion_nll  mean -log p per token over each completion and its end-of-text id (the
                  tokens SFT's loss covers), given the prompt
FILE rows {"prompt", "chosen", "rejected"} (heldout_dpo.jsonl) give
  policy_accuracy share of pairs where RUN gives `chosen` the higher log-likelihood
  and, with --reference (the run DPO started from), DPO's implicit reward
  z = beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)))
  reward_accuracy share with z > 0; reward_margin its mean (beta: RUN's dpo.beta)
Prints one JSON object.
"""
import argparse
import json
import pathlib
import sys

import numpy as np

import reward  # this directory's reward.py: the exact match GRPO trains on


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def read_rows(path: str) -> tuple[str, list[dict]]:
  """(kind: "answers" | "pairs", rows) of a JSONL file; bad content is a one-line error."""
  file = pathlib.Path(path)
  if not file.is_file():
    fail(f"{path}: no such file")
  rows = []
  for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        fail(f"{path}:{number}: not valid JSON ({e.msg})")
  for kind, fields in (("answers", ("prompt", "completion", "answer")),
                       ("pairs", ("prompt", "chosen", "rejected"))):
    if rows and all(isinstance(r, dict) and all(isinstance(r.get(f), str) for f in fields)
                    for r in rows):
      return kind, rows
  fail(f"{path}: every row needs string fields prompt, completion, answer (or prompt, chosen, "
       "rejected)")


class Scorer:
  """A run's sampler plus a jitted per-token log-likelihood of answers given prompts."""

  def __init__(self, workdir: str):
    import jax
    from treadle.infer import sampler as sampler_lib
    from treadle.model import decode
    from treadle.train.tasks import post  # the log-probabilities the post-training losses use
    self.sampler = sampler_lib.Sampler.from_workdir(workdir)
    graphdef = self.sampler.graphdef
    self._logprobs = jax.jit(lambda params, inputs, targets: post.token_logprobs(
        decode.merge(graphdef, params), inputs, targets))

  def greedy(self, prompts: list[str], max_new_tokens: int) -> list[str]:
    out = self.sampler.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    return [c.text for c in out]

  def answer_logprobs(self, prompts: list[str], answers: list[str]) -> list[np.ndarray]:
    """log p of each answer token, and of the end-of-text id after it, given its prompt."""
    tokenizer = self.sampler.tokenizer
    seqs, starts = [], []
    for prompt, answer in zip(prompts, answers):
      prompt_ids = tokenizer.encode(prompt)
      seqs.append([*prompt_ids, *tokenizer.encode(answer), tokenizer.eot_id])
      starts.append(len(prompt_ids))
    length = max(map(len, seqs)) - 1
    if length > self.sampler.window:
      fail(f"a prompt and answer of {length + 1} tokens exceed the model's context "
           f"({self.sampler.window})")
    ids = np.zeros((len(seqs), length + 1), np.int32)  # right padding: causal, never read
    for i, s in enumerate(seqs):
      ids[i, :len(s)] = s
    logp = np.asarray(self._logprobs(self.sampler.params, ids[:, :-1], ids[:, 1:]))
    # target t is token t+1: the answer's first token is target start - 1
    return [logp[i, start - 1:len(s) - 1] for i, (start, s) in enumerate(zip(starts, seqs))]


def answers_report(scorer: Scorer, rows: list[dict], max_new_tokens: int) -> dict:
  prompts = [r["prompt"] for r in rows]
  texts = scorer.greedy(prompts, max_new_tokens)
  hits = [reward.exact_match(r["prompt"], t, r) for r, t in zip(rows, texts)]
  logps = scorer.answer_logprobs(prompts, [r["completion"] for r in rows])
  tokens = sum(len(l) for l in logps)
  return {"rows": len(rows), "exact_match": float(np.mean(hits)),
          "completion_nll": float(-sum(l.sum() for l in logps) / tokens),
          "examples": [f"{p}{t}" for p, t in zip(prompts[:5], texts[:5])]}


def pair_logprobs(scorer: Scorer, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  prompts = [r["prompt"] for r in rows]
  return tuple(np.array([l.sum() for l in scorer.answer_logprobs(prompts, [r[side] for r in rows])])
               for side in ("chosen", "rejected"))


def dpo_beta(run: str) -> float:
  from treadle.train import config as config_lib
  cfg = config_lib.from_run(pathlib.Path(run))
  if cfg.task != "dpo":
    fail(f"--reference: {run} is a task={cfg.task} run; the implicit reward needs a dpo run")
  return cfg.dpo.beta


def pairs_report(scorer: Scorer, rows: list[dict], reference: str | None,
                 beta: float | None) -> dict:
  chosen, rejected = pair_logprobs(scorer, rows)
  out = {"rows": len(rows), "policy_accuracy": float(np.mean(chosen > rejected))}
  if reference:
    ref_chosen, ref_rejected = pair_logprobs(Scorer(reference), rows)
    z = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    out.update(reward_accuracy=float(np.mean(z > 0)), reward_margin=float(z.mean()))
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("run", help="a treadle run directory")
  p.add_argument("file", help="held-out JSONL rows (heldout.jsonl or heldout_dpo.jsonl)")
  p.add_argument("--reference", help="pairs: the run DPO started from (for reward_accuracy)")
  p.add_argument("--max_new_tokens", type=int, default=8)
  p.add_argument("--label", default="", help="a name printed with the figures")
  args = p.parse_args()
  for path in (args.run, args.reference):
    if path and not (pathlib.Path(path) / "config.json").is_file():
      fail(f"{path}: not a treadle run directory (no config.json)")
  kind, rows = read_rows(args.file)
  beta = dpo_beta(args.run) if args.reference and kind == "pairs" else None
  try:
    scorer = Scorer(args.run)
    if kind == "answers":
      report = answers_report(scorer, rows, args.max_new_tokens)
    else:
      report = pairs_report(scorer, rows, args.reference, beta)
  except ValueError as e:  # text the run's tokenizer cannot encode, an empty prompt
    fail(f"{args.file}: {e}")
  print(json.dumps({"label": args.label, "run": args.run, "file": args.file, **report}))


if __name__ == "__main__":
  main()
