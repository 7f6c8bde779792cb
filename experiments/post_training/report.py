"""The figures of a run.sh output directory as markdown tables, and GRPO's reward curve.

  python experiments/post_training/report.py OUT [--plot FILE.png]

Reads OUT/results.jsonl (evaluate.py's lines), OUT/times.txt and the metrics.jsonl of the
dpo_beta* and grpo runs; prints the tables the README quotes. --plot draws train_reward_mean
and val_reward_mean of OUT/grpo against the step.
"""
import argparse
import json
import pathlib
import sys

from matplotlib import figure

from treadle.train import metrics


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def results(out: pathlib.Path) -> tuple[dict, dict]:
  """(label -> heldout.jsonl figures, label -> heldout_dpo.jsonl figures)."""
  answers, pairs = {}, {}
  for line in (out / "results.jsonl").read_text().splitlines():
    row = json.loads(line)
    (answers if "exact_match" in row else pairs)[row["label"]] = row
  return answers, pairs


def last(rows: list[dict], key: str):
  values = [r[key] for r in rows if key in r]
  return values[-1] if values else None


def answers_table(answers: dict) -> list[str]:
  lines = ["| model | held-out exact match | held-out completion NLL (nats/token) |",
           "|---|---:|---:|"]
  lines += [f"| {label} | {r['exact_match']:.3f} | {r['completion_nll']:.4f} |"
            for label, r in answers.items()]
  return lines


def dpo_table(out: pathlib.Path, pairs: dict) -> list[str]:
  lines = ["| run | held-out reward accuracy | held-out reward margin | held-out policy accuracy "
           "| val reward accuracy (in run) | test reward accuracy (in run) |",
           "|---|---:|---:|---:|---:|---:|"]
  for label, r in pairs.items():
    if "reward_accuracy" not in r:
      lines.append(f"| {label} | | | {r['policy_accuracy']:.3f} | | |")
      continue
    rows = metrics.read(out / label)
    lines.append(f"| {label} | {r['reward_accuracy']:.3f} | {r['reward_margin']:.3f} | "
                 f"{r['policy_accuracy']:.3f} | {last(rows, 'val_reward_accuracy'):.3f} | "
                 f"{last(rows, 'test_reward_accuracy'):.3f} |")
  return lines


def grpo_curve(rows: list[dict]) -> tuple[list, list]:
  train = [(r["step"], r["train_reward_mean"]) for r in rows if "train_reward_mean" in r]
  val = [(r["step"], r["val_reward_mean"]) for r in rows if "val_reward_mean" in r]
  return train, val


def plot(rows: list[dict], start: float | None, end: float | None, path: pathlib.Path) -> None:
  """Figures are built without pyplot: no global state, no display needed."""
  train, val = grpo_curve(rows)
  fig = figure.Figure(figsize=(7, 4.2))
  ax = fig.subplots()
  ax.plot(*zip(*train), linewidth=1, alpha=0.8,
          label="train_reward_mean (sampled, temperature 1)")
  ax.plot(*zip(*val), marker="o", markersize=3, label="val_reward_mean (greedy, 100 prompts)")
  if start is not None and end is not None:
    ax.plot([0, max(s for s, _ in train)], [start, end], linestyle="none", marker="s",
            markerfacecolor="none", color="k", label="held-out exact match (500 problems)")
  ax.set(xlabel="GRPO step", ylabel="exact-match reward", ylim=(0, 1),
         title="GRPO on two-digit addition, from a 10-step SFT")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out", help="run.sh's output directory")
  p.add_argument("--plot", help="PNG to draw GRPO's reward curve into")
  args = p.parse_args()
  out = pathlib.Path(args.out)
  if not (out / "results.jsonl").is_file():
    fail(f"{out}: no results.jsonl (run experiments/post_training/run.sh first)")
  answers, pairs = results(out)
  grpo = metrics.read(out / "grpo")
  lines = [*answers_table(answers), "", *dpo_table(out, pairs), "",
           "| GRPO step | " + " | ".join(str(s) for s, _ in grpo_curve(grpo)[1]) + " |",
           "|---|" + "---:|" * len(grpo_curve(grpo)[1]),
           "| val_reward_mean | " + " | ".join(f"{v:.2f}" for _, v in grpo_curve(grpo)[1]) + " |",
           "", f"GRPO test_reward_mean: {last(grpo, 'test_reward_mean')}", "",
           "| stage | wall time (s) |", "|---|---:|"]
  lines += [f"| {name} | {float(sec):.1f} |" for name, sec in
            (l.split() for l in (out / "times.txt").read_text().splitlines())]
  print("\n".join(lines))
  if args.plot and grpo:
    start, end = (answers.get(k, {}).get("exact_match") for k in ("sft_short", "grpo"))
    plot(grpo, start, end, pathlib.Path(args.plot))
    print(f"\nwrote {args.plot}")


if __name__ == "__main__":
  main()
