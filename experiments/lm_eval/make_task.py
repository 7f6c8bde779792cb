"""Files for evaluating a served run with lm-evaluation-harness, nothing from a hub.

Writes into OUT: `next_line.jsonl` (multiple choice: which line follows a Shakespeare line;
the right one and 3 others drawn from the same text, seeded) and, from a run whose tokenizer
is `bpe` (a Hugging Face `tokenizers` model), `tokenizer/` as a Hugging Face tokenizer
directory, which lm-eval's `local-completions` uses to turn text into the token ids it sends.

  python experiments/lm_eval/make_task.py --text FILE --workdir RUN --out DIR [--items 40]
"""
import argparse
import json
import pathlib
import random


def next_line_items(text: str, items: int, seed: int) -> list[dict]:
  lines = [l.strip() for l in text.splitlines() if len(l.strip()) > 20]
  pairs = [(a, b) for a, b in zip(lines, lines[1:])]
  rng = random.Random(seed)
  out = []
  for context, right in rng.sample(pairs, items):
    wrong = rng.sample([l for l in lines if l != right], 3)
    choices = [right, *wrong]
    rng.shuffle(choices)
    out.append({"context": context, "choices": choices, "label": choices.index(right)})
  return out


def export_tokenizer(workdir: pathlib.Path, out: pathlib.Path) -> None:
  spec = json.loads((workdir / "tokenizer.json").read_text())
  if spec.get("kind") != "bpe":
    raise SystemExit(f"error: {workdir} has a {spec.get('kind')!r} tokenizer; lm-eval's "
                     "huggingface backend needs a run trained with data.tokenizer=bpe")
  out.mkdir(parents=True, exist_ok=True)
  (out / "tokenizer.json").write_text(json.dumps(spec["hf"]))
  (out / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000}))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--text", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--items", type=int, default=40)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  # the last 5% of the text: the run's test split, never trained on
  text = pathlib.Path(args.text).read_text(encoding="utf-8")
  items = next_line_items(text[int(len(text) * 0.95):], args.items, args.seed)
  with open(out / "next_line.jsonl", "w") as f:
    f.writelines(json.dumps(item) + "\n" for item in items)
  export_tokenizer(pathlib.Path(args.workdir), out / "tokenizer")


if __name__ == "__main__":
  main()
