"""Sweep summary: one row per trial as Markdown and CSV, and PNG plots.

Writes under the sweep root: report.md, report.csv, curves.png (train and val loss of every
trial) and metric_vs_KEY.png for each swept key (the sweep's metric against its values).
"""
import csv
import math
import pathlib
import statistics
from typing import Any

from matplotlib import figure

from treadle.sweep import plots
from treadle.sweep import runner
from treadle.sweep import spec

COLUMNS = ("status", "steps", "final_val_loss", "best_val_loss", "test_loss", "wall_time_s",
           "tokens_per_second", "error")
# Markdown: short headers; the CSV keeps the full column names
EVAL_PREFIX = "eval/"  # downstream task columns, after COLUMNS
_HEADERS = {"final_val_loss": "final val", "best_val_loss": "best val", "test_loss": "test",
            "wall_time_s": "wall time (s)", "tokens_per_second": "tokens/s"}


def rows(sweep: spec.Sweep, trials: list[spec.Trial], layout: runner.Layout) -> list[dict]:
  """One dict per trial: its swept values, then COLUMNS."""
  return [_row(sweep, t, layout) for t in trials]


def _row(sweep: spec.Sweep, trial: spec.Trial, layout: runner.Layout) -> dict[str, Any]:
  metrics = runner.read_metrics(layout.workdir(trial.name))
  status = runner.read_status(layout, trial.name)
  train, val = plots.curves(metrics)
  speeds = [r["tokens_per_second"] for r in metrics if "tokens_per_second" in r]
  tests = [r["test_loss"] for r in metrics if "test_loss" in r]
  # eval.tasks scores (eval/NAME/acc): their values at the trial's last evaluation
  evals = {k: v for r in metrics for k, v in r.items() if k.startswith(EVAL_PREFIX)}
  return {"trial": trial.name, **trial.swept,
          "status": _state(metrics, status, runner.command(sweep, trial, layout)),
          "steps": max((r["step"] for r in metrics), default=None),
          "final_val_loss": val[-1][1] if val else None,
          "best_val_loss": min(v for _, v in val) if val else None,
          "test_loss": tests[-1] if tests else None,
          "wall_time_s": runner.wall_time(status) if status else None,
          "tokens_per_second": statistics.median(speeds) if speeds else None,
          "error": (status or {}).get("error") or "", **evals}


def _state(metrics: list[dict], status: dict | None, argv: list[str]) -> str:
  """finished | running | failed | interrupted | outdated | incomplete (trained outside the
  runner, not done) | pending."""
  if runner.is_finished(metrics, status, argv):
    return "finished"
  if status is None:
    return "incomplete" if metrics else "pending"
  if status["argv"][1:] != argv[1:]:
    return "outdated"  # its overrides changed since: the next sweep run continues it
  if status["state"] == "running" and not runner.is_alive(status):
    return "interrupted"  # its sweep process was killed
  return status["state"]


def best(sweep: spec.Sweep, table: list[dict]) -> dict | None:
  done = [r for r in table if r["status"] == "finished" and r[sweep.metric] is not None]
  return min(done, key=lambda r: r[sweep.metric]) if done else None


def markdown(sweep: spec.Sweep, table: list[dict], sweep_file: str) -> str:
  keys = _swept_keys(table)
  counts = {}
  for r in table:
    counts[r["status"]] = counts.get(r["status"], 0) + 1
  top = best(sweep, table)
  fixed = ", ".join(f"`{k}={spec.format_value(v)}`" for k, v in sweep.fixed.items()) or "none"
  lines = [f"# Sweep `{sweep.name}`", "",
           f"Command: `treadle-sweep {sweep_file}`. Base config `{sweep.base_config}`; "
           f"fixed overrides: {fixed}.", "",
           f"{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
           + "." + (f" Best by {sweep.metric}: **{top['trial']}** ({top[sweep.metric]:.4f})."
                    if top else ""), ""]
  columns = ["trial", *keys, *COLUMNS[:-1], *_eval_keys(table)]
  lines.append("| " + " | ".join(_HEADERS.get(c, c) for c in columns) + " |")
  lines.append("|" + "|".join("---" if c in ("trial", "status") else "---:" for c in columns)
               + "|")
  for r in table:
    lines.append("| " + " | ".join(_cell(c, r.get(c), r is top) for c in columns) + " |")
  failed = [r for r in table if r["error"]]
  if failed:
    lines += ["", "Errors:", ""] + [f"- `{r['trial']}`: {r['error']}" for r in failed]
  return "\n".join(lines) + "\n"


def _cell(column: str, value: Any, bold: bool) -> str:
  if value is None:
    return ""
  if column == "trial":
    return f"**{value}**" if bold else value
  if column in ("wall_time_s", "tokens_per_second"):
    return f"{value:.0f}"
  if column.endswith("_loss") or column.startswith(EVAL_PREFIX):
    return f"{value:.4f}"
  return spec.format_value(value)


def write_csv(table: list[dict], path: pathlib.Path) -> None:
  columns = ["trial", *_swept_keys(table), *COLUMNS, *_eval_keys(table)]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for r in table:
      writer.writerow({c: "" if r.get(c) is None else r[c] for c in columns})


def _swept_keys(table: list[dict]) -> list[str]:
  return [k for k in table[0] if k != "trial" and k not in COLUMNS
          and not k.startswith(EVAL_PREFIX)] if table else []


def _eval_keys(table: list[dict]) -> list[str]:
  """The eval/NAME/metric columns of any trial, in first-seen order."""
  return list(dict.fromkeys(k for r in table for k in r if k.startswith(EVAL_PREFIX)))


def plot_curves(trials: list[spec.Trial], layout: runner.Layout, path: pathlib.Path,
                title: str) -> None:
  runs = {t.name: plots.curves(runner.read_metrics(layout.workdir(t.name))) for t in trials}
  fig = figure.Figure(figsize=(12, 5), layout="constrained")
  plots.draw_curves(fig, runs, title)
  fig.savefig(path, dpi=100)


def plot_metric(sweep: spec.Sweep, table: list[dict], key: str, path: pathlib.Path) -> None:
  """The metric against `key`: a dot per trial, a line through the seed means of each
  combination of the other swept keys (when there are few enough to tell apart)."""
  done = [r for r in table if r["status"] == "finished" and r[sweep.metric] is not None]
  others = [k for k in _swept_keys(table) if k not in (key, spec.SEED_KEY)]
  groups: dict[tuple, list[dict]] = {}
  for r in done:
    groups.setdefault(tuple(r[k] for k in others), []).append(r)
  numeric = all(isinstance(r[key], (int, float)) and not isinstance(r[key], bool) for r in done)
  categories = sorted({spec.format_value(r[key]) for r in done})
  x_of = (lambda v: v) if numeric else (lambda v: categories.index(spec.format_value(v)))
  fig = figure.Figure(figsize=(6, 4), layout="constrained")
  ax = fig.subplots()
  lines = len(groups) <= 10
  for i, (group, members) in enumerate(sorted(groups.items(), key=lambda g: str(g[0]))):
    color = f"C{i % 10}" if lines else "C0"
    label = ", ".join(f"{k.split('.')[-1]}={spec.format_value(v)}" for k, v in zip(others, group))
    ax.scatter([x_of(r[key]) for r in members], [r[sweep.metric] for r in members],
               color=color, alpha=0.6, s=18)
    by_x: dict[Any, list[float]] = {}
    for r in members:
      by_x.setdefault(x_of(r[key]), []).append(r[sweep.metric])
    if lines and len(by_x) > 1:
      xs = sorted(by_x)
      ax.plot(xs, [statistics.mean(by_x[x]) for x in xs], color=color, marker="o",
              label=label or None)
  if numeric and done and min(r[key] for r in done) > 0 and _spread(done, key) >= 10:
    ax.set_xscale("log")
  if not numeric:
    ax.set_xticks(range(len(categories)), categories)
  ax.set_xlabel(key)
  ax.set_ylabel(sweep.metric.replace("_", " "))
  ax.set_title(f"{sweep.name}: {sweep.metric} vs {key.split('.')[-1]}")
  ax.grid(alpha=0.3)
  if lines and others and ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)


def _spread(done: list[dict], key: str) -> float:
  values = [r[key] for r in done]
  return max(values) / min(values) if min(values) > 0 else math.inf


def write(sweep: spec.Sweep, trials: list[spec.Trial], layout: runner.Layout,
          sweep_file: str) -> list[pathlib.Path]:
  """Writes report.md, report.csv and the plots; returns their paths."""
  layout.root.mkdir(parents=True, exist_ok=True)
  table = rows(sweep, trials, layout)
  md, csv_path = layout.root / "report.md", layout.root / "report.csv"
  md.write_text(markdown(sweep, table, sweep_file))
  write_csv(table, csv_path)
  written = [md, csv_path, layout.root / "curves.png"]
  plot_curves(trials, layout, written[-1], f"sweep {sweep.name}")
  for key in _swept_keys(table):
    if key != spec.SEED_KEY:
      written.append(layout.root / f"metric_vs_{key}.png")
      plot_metric(sweep, table, key, written[-1])
  return written
