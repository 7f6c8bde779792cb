"""Figures of treadle-scaling: the approach-3 fit and the IsoFLOP curves, each with the
compute-optimal frontier N_opt(C), D_opt(C). Built without pyplot (no global state)."""
import pathlib

import numpy as np
from matplotlib import colors
from matplotlib import figure
from matplotlib import ticker

from treadle.sweep import scaling


def _compute_range(compute: np.ndarray) -> np.ndarray:
  """The data's compute range, a decade wider on each side (where the frontier is used)."""
  return np.logspace(np.log10(compute.min()) - 1, np.log10(compute.max()) + 1, 100)


def _frontier(ax, C: np.ndarray, N_opt: np.ndarray, D_opt: np.ndarray, a: float, b: float,
              title: str) -> None:
  ax.plot(C, N_opt, color="C0", label=f"N_opt ~ C^{a:.3f} (parameters)")
  ax.plot(C, D_opt, color="C1", label=f"D_opt ~ C^{b:.3f} (tokens)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("compute C = 6ND (FLOPs)")
  ax.set_ylabel("parameters N, tokens D")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize="small")


def plot_fit(fit: scaling.Fit, N, D, L, kept: np.ndarray, path: pathlib.Path) -> None:
  """Left: loss against compute, the runs coloured by N, the fitted L along a few model sizes
  and at the compute-optimal N (dashed); runs left out of the fit as crosses. Right: the
  frontier."""
  C = 6 * N * D
  grid = _compute_range(C)
  fig = figure.Figure(figsize=(12, 5), layout="constrained")
  ax_loss, ax_frontier = fig.subplots(1, 2)
  norm = colors.LogNorm(N.min(), N.max() if N.max() > N.min() else N.min() * 10)
  left_out = np.setdiff1d(np.arange(len(L)), kept)
  points = ax_loss.scatter(C[kept], L[kept], c=N[kept], norm=norm, cmap="viridis", s=14)
  if len(left_out):
    ax_loss.scatter(C[left_out], L[left_out], color="grey", marker="x", s=20,
                    label="left out of the fit")
  for size in np.quantile(N, [0.0, 0.5, 1.0]):
    ax_loss.plot(grid, fit.loss(size, grid / (6 * size)), color=points.cmap(norm(size)),
                 linewidth=1, label=f"fit at N = {size:.3g}")
  N_opt, D_opt = fit.optimal(grid)
  ax_loss.plot(grid, fit.loss(N_opt, D_opt), "k--", label="fit at N_opt(C)")
  ax_loss.set_ylim(min(fit.E, L.min()) * 0.95, L.max() * 1.05)
  ax_loss.set_xscale("log")
  ax_loss.set_xlabel("compute C = 6ND (FLOPs)")
  ax_loss.set_ylabel("final validation loss")
  ax_loss.set_title(f"L = {fit.E:.3g} + {fit.A:.3g}/N^{fit.alpha:.3f} + "
                    f"{fit.B:.3g}/D^{fit.beta:.3f}  ({fit.n} runs)")
  ax_loss.grid(alpha=0.3)
  ax_loss.legend(fontsize="small")
  fig.colorbar(points, ax=ax_loss, label="parameters N")
  _frontier(ax_frontier, grid, N_opt, D_opt, fit.a, fit.b, "compute-optimal frontier (approach 3)")
  ax_frontier.scatter(C[kept], N[kept], color="C0", alpha=0.3, s=6)  # where the runs lie
  ax_frontier.scatter(C[kept], D[kept], color="C1", alpha=0.3, s=6)
  fig.savefig(path, dpi=100)


def plot_isoflop(result: scaling.IsoFLOPFit, N, L, path: pathlib.Path) -> None:
  """Left: loss against N for each budget, its parabola and minimum. Right: the minima and the
  power laws through them."""
  fig = figure.Figure(figsize=(12, 5), layout="constrained")
  ax_curves, ax_frontier = fig.subplots(1, 2)
  for i, budget in enumerate(result.budgets):
    color, runs = f"C{i % 10}", list(budget.runs)
    ax_curves.scatter(N[runs], L[runs], color=color, s=14)
    log_N = np.linspace(np.log(N[runs]).min(), np.log(N[runs]).max(), 50)
    ax_curves.plot(np.exp(log_N), np.polyval(budget.parabola, log_N), color=color,
                   label=f"C = {budget.C:.3g}")
    ax_curves.plot(budget.N_opt, budget.loss, marker="*", markersize=12, color=color,
                   markeredgecolor="k")
  ax_curves.set_xscale("log")
  # under a decade of N: matplotlib labels the minor ticks too, and they overlap
  ax_curves.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax_curves.set_xlabel("parameters N")
  ax_curves.set_ylabel("final validation loss")
  ax_curves.set_title(f"IsoFLOP curves ({result.n} runs, {len(result.budgets)} budgets)")
  ax_curves.grid(alpha=0.3)
  ax_curves.legend(fontsize="small")
  budget_C = np.array([b.C for b in result.budgets])
  grid = _compute_range(budget_C)
  _frontier(ax_frontier, grid, *result.optimal(grid), result.a, result.b,
            "compute-optimal frontier (approach 2)")
  ax_frontier.scatter(budget_C, [b.N_opt for b in result.budgets], color="C0", zorder=3)
  ax_frontier.scatter(budget_C, [b.D_opt for b in result.budgets], color="C1", zorder=3)
  fig.savefig(path, dpi=100)
