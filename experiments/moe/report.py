"""The figures of a run.sh output directory as markdown tables, and the plots.

  python experiments/moe/report.py OUT [--plots DIR]

Reads OUT/{dense,moe}_s{seed}, OUT/moe_noaux_s1337, OUT/ep8, OUT/dp8 (metrics.jsonl) and
OUT/times.txt; prints the tables the README quotes (parts whose runs are missing are left
out). Training time is summed from the tokens_per_second of each logged interval (the trainer
measures it over training steps only: no compilation, evaluation or checkpoint saving).
--plots writes val_loss.png (val loss against step and against training time) and
load_balance.png (per-layer max/mean expert load over steps, with and without the aux loss).
"""
import argparse
import pathlib
import re
import statistics
import sys

from matplotlib import figure

from treadle.train import metrics

SEEDS = (1337, 0, 1)
TOKENS_PER_STEP = {"": 12 * 64, "ep8": 16 * 64, "dp8": 16 * 64}


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def train_rows(rows: list[dict]) -> list[dict]:
  return [r for r in rows if "tokens_per_second" in r]


def train_time(rows: list[dict], tokens_per_step: int) -> list[tuple[int, float]]:
  """(step, training seconds up to it) at every logged step."""
  out, prev, total = [(0, 0.0)], 0, 0.0
  for r in train_rows(rows):
    total += (r["step"] - prev) * tokens_per_step / r["tokens_per_second"]
    prev = r["step"]
    out.append((prev, total))
  return out


def val_curve(rows: list[dict]) -> list[tuple[int, float]]:
  return [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]


def at(points: list[tuple[float, float]], x: float) -> float:
  """Linear interpolation of (x, y) points at x (clamped to their range)."""
  if x <= points[0][0]:
    return points[0][1]
  for (x0, y0), (x1, y1) in zip(points, points[1:]):
    if x <= x1:
      return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
  return points[-1][1]


def timed_val(rows: list[dict], tokens_per_step: int) -> list[tuple[float, float]]:
  """(training seconds, val loss) at every evaluation."""
  clock = train_time(rows, tokens_per_step)
  return [(at(clock, s), v) for s, v in val_curve(rows)]


def ms_per_step(rows: list[dict], tokens_per_step: int) -> float:
  """Median over logged intervals (robust to bursts of load from other users)."""
  return statistics.median(tokens_per_step / r["tokens_per_second"] * 1e3
                           for r in train_rows(rows))


def imbalance(rows: list[dict], layer: int) -> list[tuple[int, float, float]]:
  """(step, max/mean load, coefficient of variation) of one layer's expert loads."""
  out = []
  for r in train_rows(rows):
    loads = [v for k, v in r.items() if k.startswith(f"train_expert_load/layer{layer}/")]
    mean = statistics.fmean(loads)
    out.append((r["step"], max(loads) / mean, statistics.pstdev(loads) / mean))
  return out


def num_layers(rows: list[dict]) -> int:
  keys = [k for r in train_rows(rows)[:1] for k in r if k.startswith("train_expert_load/")]
  return len({re.match(r"train_expert_load/layer(\d+)/", k).group(1) for k in keys})


def quality_tables(runs: dict) -> list[str]:
  steps = [s for s, _ in val_curve(runs["dense", SEEDS[0]])]
  lines = ["| step | " + " | ".join(f"dense s{s} | MoE s{s}" for s in SEEDS)
           + " | dense mean | MoE mean | MoE − dense |", "|---:" * (4 + 2 * len(SEEDS)) + "|"]
  for i, step in enumerate(steps):
    d = [val_curve(runs["dense", s])[i][1] for s in SEEDS]
    m = [val_curve(runs["moe", s])[i][1] for s in SEEDS]
    cells = " | ".join(f"{a:.4f} | {b:.4f}" for a, b in zip(d, m))
    lines.append(f"| {step} | {cells} | {statistics.fmean(d):.4f} | {statistics.fmean(m):.4f} "
                 f"| {statistics.fmean(m) - statistics.fmean(d):+.4f} |")
  lines += ["", "| seed | dense ms/step | MoE ms/step | MoE/dense | dense train s | MoE train s "
            "| dense val at its end | MoE val at dense's train time | MoE train s to dense's "
            "final val |", "|---:" * 9 + "|"]
  cols = []
  for s in SEEDS:
    d, m = runs["dense", s], runs["moe", s]
    td, tm = timed_val(d, 768), timed_val(m, 768)
    row = (ms_per_step(d, 768), ms_per_step(m, 768), ms_per_step(m, 768) / ms_per_step(d, 768),
           td[-1][0], tm[-1][0], td[-1][1], at(tm, td[-1][0]), time_to(tm, td[-1][1]))
    cols.append(row)
    lines.append(f"| {s} | " + " | ".join(_cell(v, i) for i, v in enumerate(row)) + " |")
  means = [statistics.fmean(c[i] for c in cols) for i in range(len(cols[0]))]
  lines.append("| mean | " + " | ".join(_cell(v, i) for i, v in enumerate(means)) + " |")
  return lines


def _cell(value: float, column: int) -> str:
  return f"{value:.{(1, 1, 2, 0, 0, 4, 4, 0)[column]}f}"


def time_to(points: list[tuple[float, float]], target: float) -> float:
  """The first x where the (x, falling y) points reach target (interpolated); inf if never."""
  for (x0, y0), (x1, y1) in zip(points, points[1:]):
    if y1 <= target:
      return x0 + (x1 - x0) * (y0 - target) / (y0 - y1) if y0 > target else x0
  return float("inf")


def ratio_table(runs: dict, ratio: float) -> list[str]:
  """Equal wall time from the paired step-time ratio: MoE after 2000 / ratio steps."""
  steps = 2000 / ratio
  d = [val_curve(runs["dense", s])[-1][1] for s in SEEDS]
  m = [at(val_curve(runs["moe", s]), steps) for s in SEEDS]
  return [f"At the paired MoE/dense step-time ratio {ratio:.2f}, dense's 2000 steps take the time "
          f"of {steps:.0f} MoE steps: val loss (mean of the 3 seeds, MoE interpolated between "
          f"evaluations) dense {statistics.fmean(d):.4f}, MoE {statistics.fmean(m):.4f} "
          f"(per seed: " + ", ".join(f"{a:.4f} vs {b:.4f}" for a, b in zip(d, m)) + ")",
          "", "MoE steps to each seed's dense final val loss, and that time over dense's 2000 steps "
          "at the paired ratio: " + ", ".join(
              f"s{s} {n:.0f} ({n * ratio / 2000:.2f}x)" for s, n in
              ((s, time_to(val_curve(runs["moe", s]), v)) for s, v in zip(SEEDS, d)))]


def balance_table(with_aux: list[dict], without: list[dict]) -> list[str]:
  lines = ["| layer | max/mean, aux 0.01 | max/mean, aux 0 | CV, aux 0.01 | CV, aux 0 |",
           "|---:|---:|---:|---:|---:|"]
  for layer in range(num_layers(with_aux)):
    a, b = imbalance(with_aux, layer)[-20:], imbalance(without, layer)[-20:]  # last 200 steps
    lines.append(f"| {layer} | {statistics.fmean(x[1] for x in a):.2f} | "
                 f"{statistics.fmean(x[1] for x in b):.2f} | {statistics.fmean(x[2] for x in a):.2f}"
                 f" | {statistics.fmean(x[2] for x in b):.2f} |")
  final = lambda rows, key: [r[key] for r in rows if key in r][-1]
  lines += ["", f"val loss at 2000: aux 0.01 {final(with_aux, 'val_loss'):.4f}, aux 0 "
            f"{final(without, 'val_loss'):.4f}; val aux loss (k = 2 at perfect balance) "
            f"{final(with_aux, 'val_moe_aux_loss'):.3f} vs {final(without, 'val_moe_aux_loss'):.3f}"]
  return lines


def parallel_table(ep: list[dict], dp: list[dict]) -> list[str]:
  a, b = ms_per_step(ep, 1024), ms_per_step(dp, 1024)
  final = lambda rows: [r["train_loss"] for r in train_rows(rows)][-1]
  return ["| mesh | ms/step (median of intervals) | final train loss |", "|---|---:|---:|",
          f"| expert 8 (experts split) | {a:.1f} | {final(ep):.4f} |",
          f"| data 8 (experts replicated) | {b:.1f} | {final(dp):.4f} |",
          f"\nexpert-parallel / replicated step time: {a / b:.2f}"]


def paired_ratio(path: pathlib.Path) -> float | None:
  """B/A of step_ratio.py's median line."""
  found = re.search(r"^median: .* B/A ([0-9.]+)", path.read_text(), re.M) if path.exists() else None
  return float(found.group(1)) if found else None


def plot_val(runs: dict, path: pathlib.Path) -> None:
  """Figures are built without pyplot: no global state, no display needed."""
  fig = figure.Figure(figsize=(11, 4.2))
  by_step, by_time = fig.subplots(1, 2)
  for (kind, seed), rows in sorted(runs.items(), key=str):
    color = "tab:blue" if kind == "dense" else "tab:red"
    label = f"{kind} s{seed}"
    by_step.plot(*zip(*val_curve(rows)), color=color, marker="o", markersize=3, alpha=0.7,
                 label=label)
    by_time.plot(*zip(*timed_val(rows, 768)), color=color, marker="o", markersize=3, alpha=0.7,
                 label=label)
  by_step.set(xlabel="step", ylabel="val loss (cross entropy)", ylim=(1.78, 2.6),
              title="val loss at equal steps")
  by_time.set(xlabel="training seconds (no compile, eval or saves)", ylim=(1.78, 2.6),
              title="val loss at equal training time")
  for ax in (by_step, by_time):
    ax.grid(alpha=0.3)
  by_step.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_balance(with_aux: list[dict], without: list[dict], path: pathlib.Path) -> None:
  layers = num_layers(with_aux)
  fig = figure.Figure(figsize=(11, 3.4))
  for layer, ax in enumerate(fig.subplots(1, layers, sharey=True)):
    for rows, label, color in ((with_aux, "aux 0.01", "tab:green"), (without, "aux 0", "tab:red")):
      curve = imbalance(rows, layer)
      ax.plot([c[0] for c in curve], [c[1] for c in curve], color=color, linewidth=1,
              label=label)
    ax.axhline(1.0, color="k", linewidth=0.5)
    ax.set(title=f"layer {layer}", xlabel="step")
    ax.grid(alpha=0.3)
  fig.axes[0].set_ylabel("max expert load / mean (8 experts)")
  fig.axes[0].legend()
  fig.suptitle("MoE load imbalance per layer, train batches, seed 1337")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out", type=pathlib.Path)
  parser.add_argument("--plots", type=pathlib.Path, default=None)
  args = parser.parse_args()
  if not args.out.is_dir():
    fail(f"{args.out} is not a directory")
  read = lambda name: metrics.read(args.out / name)
  runs = {(k, s): read(f"{k}_s{s}") for k in ("dense", "moe") for s in SEEDS}
  if all(len(val_curve(r)) for r in runs.values()):
    print("\n".join(quality_tables(runs)) + "\n")
    ratio = paired_ratio(args.out / "step_ratio.txt")
    if ratio:
      print("\n".join(ratio_table(runs, ratio)) + "\n")
    if args.plots:
      plot_val(runs, args.plots / "val_loss.png")
  with_aux, without = read("moe_s1337"), read("moe_noaux_s1337")
  if train_rows(with_aux) and val_curve(without):
    print("\n".join(balance_table(with_aux, without)) + "\n")
    if args.plots:
      plot_balance(with_aux, without, args.plots / "load_balance.png")
  ep, dp = read("ep8"), read("dp8")
  if train_rows(ep) and train_rows(dp):
    print("\n".join(parallel_table(ep, dp)) + "\n")
  if (args.out / "times.txt").exists():
    print("whole-command seconds:", (args.out / "times.txt").read_text().replace("\n", "; "))


if __name__ == "__main__":
  main()
