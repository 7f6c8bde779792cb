"""Val loss vs learning rate per width, under sp and mup, from the mup sweep's report.csv.

Command: python experiments/mup/report.py runs/sweeps/mup
Writes experiments/mup/lr_vs_width.png and prints each width's best learning rate.
"""
import csv
import pathlib
import sys

from matplotlib import figure

HERE = pathlib.Path(__file__).parent


def main() -> None:
  root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/sweeps/mup")
  with open(root / "report.csv") as f:
    rows = [r for r in csv.DictReader(f) if r["status"] == "finished"]
  fig = figure.Figure(figsize=(11, 4.5), layout="constrained")
  panels = fig.subplots(1, 2, sharey=True)
  print(f"{'param':5} {'width':>5}  best lr   val loss   (val loss at each lr)")
  for ax, param in zip(panels, ("sp", "mup")):
    widths = sorted({int(r["model.embed_dim"]) for r in rows if r["model.parametrization"] == param})
    for width in widths:
      mine = sorted(((float(r["optimizer.learning_rate"]), float(r["final_val_loss"]))
                     for r in rows if r["model.parametrization"] == param
                     and int(r["model.embed_dim"]) == width))
      lrs, losses = zip(*mine)
      best = min(mine, key=lambda p: p[1])
      ax.plot(lrs, losses, marker="o", label=f"width {width}")
      ax.scatter([best[0]], [best[1]], s=120, facecolors="none", edgecolors="black")
      print(f"{param:5} {width:5}  {best[0]:<8g} {best[1]:.4f}    "
            + " ".join(f"{lr:g}:{loss:.3f}" for lr, loss in mine))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("peak learning rate")
    ax.set_title(f"{param}: val loss after 300 steps")
    ax.legend()
  panels[0].set_ylabel("val loss (nats/char)")
  fig.savefig(HERE / "lr_vs_width.png", dpi=90)


if __name__ == "__main__":
  main()
