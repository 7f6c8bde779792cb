"""The files of the post-training worked example: two-digit addition, "a+b=" -> str(a + b).

  python experiments/post_training/make_data.py OUT [--seed 0]

Writes into OUT (every file one JSON object per line):
  corpus.jsonl    {"text": "a+b=c"}: the base LM's corpus, one document per line, written by
                  a teacher who never carries in --forget_share (0.9) of its lines (57+68=15),
                  so the base model learns the format and a wrong habit
  sft.jsonl       {"prompt": "a+b=", "completion": "c"}, always right
  dpo.jsonl       {"prompt", "chosen": right, "rejected": the carry-forgetting answer, or the
                  right one off by 1..9 where no carry is forgotten}
  prompts.jsonl   {"prompt", "answer"}: GRPO's prompts (reward.py scores the answer)
  heldout.jsonl   {"prompt", "completion", "answer"} and heldout_dpo.jsonl (pairs as in
                  dpo.jsonl): problems that no other file holds, in any form
The pairs (a, b), 10 <= a, b <= 99, are shuffled once with the seed; the first --heldout of
them are held out, the others feed every training file.
"""
import argparse
import json
import pathlib
import random
import sys

FIRST, LAST = 10, 99  # two-digit operands


def forgot_carry(a: int, b: int) -> str:
  """a + b by a pupil who never carries, writing the last digit of each column's sum:
  57+68 -> "15" (not 125), 83+21 -> "04" (not 104)."""
  return f"{(a // 10 + b // 10) % 10}{(a % 10 + b % 10) % 10}"


def wrong_answer(a: int, b: int, rng: random.Random) -> str:
  """The carry-forgetting answer where it differs from a + b, else a + b off by 1..9."""
  if (slip := forgot_carry(a, b)) != str(a + b):
    return slip
  return str(a + b + rng.choice([-1, 1]) * rng.randint(1, 9))


def corpus_rows(pairs, lines: int, forget_share: float, rng: random.Random) -> list[dict]:
  out = []
  for _ in range(lines):
    a, b = rng.choice(pairs)
    c = forgot_carry(a, b) if rng.random() < forget_share else a + b
    out.append({"text": f"{a}+{b}={c}"})
  return out


def dpo_rows(pairs, rng: random.Random) -> list[dict]:
  return [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": wrong_answer(a, b, rng)}
          for a, b in pairs]


def write(path: pathlib.Path, rows: list[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)


def build(seed: int, heldout: int, corpus_lines: int, forget_share: float, sft_rows: int,
          dpo_pairs: int, prompts: int) -> dict[str, list[dict]]:
  """File name -> rows; the same arguments give the same rows."""
  rng = random.Random(seed)
  pairs = [(a, b) for a in range(FIRST, LAST + 1) for b in range(FIRST, LAST + 1)]
  rng.shuffle(pairs)
  held, train = pairs[:heldout], pairs[heldout:]
  # each post-training file draws distinct problems, so its own val/test rows are new to it
  sample = lambda n: rng.sample(train, n)
  return {
      "corpus.jsonl": corpus_rows(train, corpus_lines, forget_share, rng),
      "sft.jsonl": [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in sample(sft_rows)],
      "dpo.jsonl": dpo_rows(sample(dpo_pairs), rng),
      "prompts.jsonl": [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in sample(prompts)],
      "heldout.jsonl": [{"prompt": f"{a}+{b}=", "completion": str(a + b), "answer": str(a + b)}
                        for a, b in held],
      "heldout_dpo.jsonl": dpo_rows(held, rng),
  }


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out", help="directory to write the files into (created if missing)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--heldout", type=int, default=500, help="problems held out of every file")
  p.add_argument("--corpus_lines", type=int, default=40_000)
  p.add_argument("--forget_share", type=float, default=0.9,
                 help="share of corpus lines whose answer forgets the carries")
  p.add_argument("--sft_rows", type=int, default=4000)
  p.add_argument("--dpo_pairs", type=int, default=2000)
  p.add_argument("--prompts", type=int, default=2000)
  args = p.parse_args()
  total = (LAST - FIRST + 1) ** 2
  counts = (args.heldout, args.corpus_lines, args.sft_rows, args.dpo_pairs, args.prompts)
  if min(counts) < 1 or max(args.sft_rows, args.dpo_pairs, args.prompts) > total - args.heldout:
    fail(f"every count must be positive and each post-training file at most {total} - "
         "--heldout problems")
  if not 0 <= args.forget_share <= 1:
    fail(f"--forget_share={args.forget_share} must be in [0, 1]")
  files = build(args.seed, args.heldout, args.corpus_lines, args.forget_share, args.sft_rows,
                args.dpo_pairs, args.prompts)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for name, rows in files.items():
    write(out / name, rows)
  print(f"wrote {', '.join(f'{n} ({len(r)})' for n, r in files.items())} to {out}")


if __name__ == "__main__":
  main()
