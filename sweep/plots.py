"""treadle-plot: train and validation loss curves of a run directory, as a PNG.

  treadle-plot --workdir DIR [--out FILE.png]     (default DIR/loss_curves.png)

A line of metrics.jsonl that is not a row is skipped with a warning naming it (the file and
its line number); the rest is plotted.

Also the curve drawing the sweep report uses. Figures are built without pyplot (no global
state, no display needed).
"""
import pathlib

from absl import flags
from matplotlib import figure

from treadle.sweep import runner
from treadle.common import entry
from treadle.common import logs

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by treadle-train.")
_OUT = flags.DEFINE_string("out", None, "PNG to write (default WORKDIR/loss_curves.png).")

Curve = list[tuple[int, float]]


def curves(rows: list[dict]) -> tuple[Curve, Curve]:
  """(train, val) as (step, loss) sorted by step. A resumed run repeats the steps after
  its last checkpoint; the later row of a step wins."""
  train, val = {}, {}
  for row in rows:
    if isinstance(row.get("train_loss"), float):
      train[row["step"]] = row["train_loss"]
    if "val_loss" in row:
      val[row["step"]] = row["val_loss"]
  return sorted(train.items()), sorted(val.items())


def draw_curves(fig: figure.Figure, runs: dict[str, tuple[Curve, Curve]], title: str) -> None:
  """Train loss (left) and val loss (right), one colour per run in both panels."""
  ax_train, ax_val = fig.subplots(1, 2, sharey=True)
  for i, (label, (train, val)) in enumerate(runs.items()):
    color = f"C{i % 10}"
    if train:
      ax_train.plot(*zip(*train), color=color, linewidth=1, alpha=0.8, label=label)
    if val:
      ax_val.plot(*zip(*val), color=color, marker="o", markersize=3, label=label)
  for ax, name in ((ax_train, "train loss"), (ax_val, "val loss")):
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
  ax_train.set_ylabel("loss (nats/token)")
  if len(runs) > 1:
    ax_val.legend(fontsize="x-small", loc="upper right")
  fig.suptitle(title)


def plot_run(workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """Writes one run's train and val loss on one axes; ValueError when it has no losses."""
  train, val = curves(runner.read_metrics(workdir))
  if not train and not val:
    raise ValueError(f"{workdir}: no losses in {workdir / 'metrics.jsonl'}")
  fig = figure.Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  if train:
    ax.plot(*zip(*train), linewidth=1, alpha=0.8, label="train")
  if val:
    ax.plot(*zip(*val), marker="o", markersize=3, label="val")
  ax.set(xlabel="step", ylabel="loss (nats/token)", title=str(workdir))
  ax.grid(alpha=0.3)
  ax.legend()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  return out


def main(argv) -> None:
  if len(argv) > 1:
    entry.fail(f"unexpected argument {argv[1]!r}; usage: treadle-plot --workdir DIR "
               "[--out FILE.png]")
  if not _WORKDIR.value:
    entry.fail("--workdir is required; usage: treadle-plot --workdir DIR [--out FILE.png]")
  workdir = pathlib.Path(_WORKDIR.value)
  logs.setup()  # a metrics.jsonl line that is not a row: one warning line naming it, skipped
  try:
    out = plot_run(workdir, pathlib.Path(_OUT.value or workdir / "loss_curves.png"))
  except ValueError as e:
    entry.fail(str(e))
  print(out)


def run() -> None:
  """Console-script entry point: a bad flag is a one-line error with exit code 2."""
  entry.run(main)


if __name__ == "__main__":
  run()
