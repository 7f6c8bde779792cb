"""Scaling-law fits of final losses: Chinchilla's approach 3 (a parametric L(N, D)) and
approach 2 (a parabola per compute budget, then power laws through the minima).

Approach 3 follows Hoffmann et al. (2022) as replicated by Besiroglu et al. (2024, Epoch AI):
log L(N, D) = LSE(a - alpha log N, b - beta log D, e), i.e. L = E + A/N^alpha + B/D^beta with
A, B, E = exp(a, b, e), fitted by L-BFGS under a Huber loss (delta 1e-3) on the residuals of
log L, from Chinchilla's grid of starts. N = parameters, D = tokens, C = 6 N D FLOPs.
"""
import dataclasses
import itertools
import math

import numpy as np
from scipy import optimize
import threadpoolctl

from treadle.sweep import scaling_data

NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")  # a, b: N_opt ~ C^a, D_opt ~ C^b
HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid (appendix D.2): a, b in 0..25, e in -1..1, alpha, beta in 0..2
GRID = np.array(list(itertools.product(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0),
                                       np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5),
                                       np.arange(0, 2.5, 0.5))))
# L-BFGS from all 4,500 grid points took 127 s (48 s of CPU) on Epoch's 240 runs on a busy
# 2-core machine; from the 100 of lowest objective 5 s, to the same fit (6 digits).
DEFAULT_STARTS = 100
# IsoFLOP runs of one budget spend it to within 5% (spec.IsoFLOP rounds steps, >= 10 of them);
# budgets are >= 1.5x apart, so a gap of more than 1.25x in 6ND between sorted runs starts a
# new budget.
MIN_BUDGET_RATIO = 1.5
GROUP_GAP = 1.25


@dataclasses.dataclass(frozen=True)
class Fit:
  """L(N, D) = E + A/N^alpha + B/D^beta fitted to n runs; ci: name -> 95% bootstrap interval
  (empty without --bootstrap)."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  n: int
  ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

  @property
  def a(self) -> float:
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  def loss(self, N, D):
    return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

  def optimal(self, C) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising L at compute C = 6 N D (Hoffmann et al. eq. 4)."""
    G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
    N = G * np.power(np.asarray(C, dtype=float) / 6, self.a)
    return N, np.asarray(C, dtype=float) / (6 * N)

  def to_json(self) -> dict:
    return {**{k: float(getattr(self, k)) for k in NAMES},
            "ci": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()}, "n": self.n}


def objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, log_loss: np.ndarray):
  """Huber loss of the log-loss residuals and its gradient in theta = (a, b, e, alpha, beta);
  x = log N, y = log D. Divided by delta^2: the raw sum is ~1e-3 for a good fit, and L-BFGS-B
  measures its progress relative to max(|f|, 1), so it would stop early on the raw sum."""
  a, b, e, alpha, beta = theta
  u, v = a - alpha * x, b - beta * y
  top = np.maximum(np.maximum(u, v), e)  # log-sum-exp without overflow
  exp_u, exp_v, exp_e = np.exp(u - top), np.exp(v - top), np.exp(e - top)
  total = exp_u + exp_v + exp_e
  residual = top + np.log(total) - log_loss
  slope = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)  # the Huber loss's derivative
  value = np.sum(slope * (residual - 0.5 * slope))      # r^2/2 inside delta, linear outside
  weight_u, weight_v = slope * exp_u / total, slope * exp_v / total
  grad = np.array([weight_u.sum(), weight_v.sum(), np.sum(slope * exp_e / total),
                   -weight_u @ x, -weight_v @ y])
  return value / HUBER_DELTA**2, grad / HUBER_DELTA**2


def _grid_values(x, y, log_loss) -> np.ndarray:
  """The objective at every grid point, vectorised in chunks (memory: chunk x runs)."""
  values = []
  for chunk in np.array_split(GRID, max(1, len(GRID) * len(x) // 500_000)):
    a, b, e, alpha, beta = (chunk[:, i:i + 1] for i in range(5))
    u, v = a - alpha * x, b - beta * y
    top = np.maximum(np.maximum(u, v), e)
    residual = top + np.log(np.exp(u - top) + np.exp(v - top) + np.exp(e - top)) - log_loss
    slope = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)
    values.append(np.sum(slope * (residual - 0.5 * slope), axis=1))
  return np.concatenate(values)


def _minimize(start, x, y, log_loss):
  return optimize.minimize(objective, start, args=(x, y, log_loss), jac=True, method="L-BFGS-B")


def _theta_fit(x, y, log_loss, starts: int) -> np.ndarray:
  order = np.argsort(_grid_values(x, y, log_loss), kind="stable")
  chosen = GRID[order[:starts]] if starts else GRID
  results = [_minimize(s, x, y, log_loss) for s in chosen]
  finite = [r for r in results if np.isfinite(r.fun) and np.all(np.isfinite(r.x))]
  if not finite:
    raise ArithmeticError(f"no start of the fit converged ({results[0].message})")
  return min(finite, key=lambda r: r.fun).x


def fit(params, tokens, loss, exclude_highest: int = 0, bootstrap: int = 0, seed: int = 0,
        starts: int = DEFAULT_STARTS) -> Fit:
  """Approach 3 on positive arrays N, D, L (see the module docstring); bootstrap > 0: that many
  resamples of the kept runs, each refitted from the full-data fit, give 95% intervals."""
  runs = scaling_data.kept(np.asarray(loss, dtype=float), exclude_highest)
  # L-BFGS-B calls BLAS on 5-vectors: OpenBLAS threads only add waiting (on a busy 2-core
  # machine, 43 s instead of 5 s for the Epoch data)
  with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
    return _fit(params, tokens, loss, runs, bootstrap, seed, starts)


def _fit(params, tokens, loss, runs, bootstrap, seed, starts) -> Fit:
  x, y, log_loss = (np.log(np.asarray(v, dtype=float)[runs]) for v in (params, tokens, loss))
  theta = _theta_fit(x, y, log_loss, starts)
  result = _from_theta(theta, len(runs))
  if bootstrap:
    result = dataclasses.replace(result, ci=_bootstrap(theta, x, y, log_loss, bootstrap, seed))
  return result


def _bootstrap(theta, x, y, log_loss, resamples: int, seed: int) -> dict:
  """2.5 and 97.5 percentiles of each of NAMES over fits to resampled runs (with
  replacement), each started from the full-data fit theta."""
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(resamples):
    i = rng.integers(0, len(x), len(x))
    refit = _from_theta(_minimize(theta, x[i], y[i], log_loss[i]).x, len(x))
    values.append([getattr(refit, k) for k in NAMES])
  with np.errstate(all="ignore"):  # a diverged resample is NaN or inf and left out
    values = np.where(np.isfinite(values), values, np.nan)
    lows, highs = np.nanpercentile(values, [2.5, 97.5], axis=0)
  return {k: (float(lo), float(hi)) for k, lo, hi in zip(NAMES, lows, highs)}


def _from_theta(theta, n: int) -> Fit:
  a, b, e, alpha, beta = (float(t) for t in theta)
  with np.errstate(over="ignore"):
    return Fit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha,
               beta=beta, n=n)


@dataclasses.dataclass(frozen=True)
class Budget:
  """One compute budget of an IsoFLOP study: loss ~ parabola(log N), its minimum."""
  C: float                 # geometric mean of 6ND over the budget's runs
  n: int
  runs: tuple[int, ...]    # their indices
  parabola: tuple[float, float, float]  # loss = p0 (log N)^2 + p1 log N + p2
  N_opt: float
  D_opt: float
  loss: float              # the parabola's minimum
  inside: bool             # N_opt lies within the sizes tried (otherwise extrapolated)


@dataclasses.dataclass(frozen=True)
class IsoFLOPFit:
  """Approach 2: N_opt = k_N C^a and D_opt = k_D C^b, through the budgets' minima."""
  a: float
  b: float
  k_N: float
  k_D: float
  budgets: list[Budget]
  n: int
  left_out: list[str]      # why each budget without a fitted minimum was left out

  def optimal(self, C) -> tuple[np.ndarray, np.ndarray]:
    C = np.asarray(C, dtype=float)
    return self.k_N * np.power(C, self.a), self.k_D * np.power(C, self.b)

  def to_json(self) -> dict:
    return {"a": self.a, "b": self.b, "k_N": self.k_N, "k_D": self.k_D, "n": self.n,
            "budgets": [{k: v for k, v in dataclasses.asdict(b).items()
                         if k not in ("runs", "parabola")} for b in self.budgets],
            "left_out": self.left_out}


def budget_groups(compute: np.ndarray) -> list[np.ndarray]:
  """Indices of the runs of each budget: sorted by C, a new group after a gap > GROUP_GAP."""
  order = np.argsort(compute, kind="stable")
  breaks = np.nonzero(compute[order][1:] > GROUP_GAP * compute[order][:-1])[0] + 1
  return np.split(order, breaks)


def isoflop(params, tokens, loss) -> IsoFLOPFit:
  """Approach 2 on positive arrays N, D, L. A budget with fewer than 3 model sizes (runs not
  finished) or without a minimum is left out; ValueError (one line) if fewer than 2 remain."""
  N, D, L = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
  budgets, left_out = [], []
  for runs in budget_groups(6 * N * D):
    try:
      budgets.append(_budget(N, D, L, runs))
    except ValueError as e:
      left_out.append(str(e))
  if len(budgets) < 2:
    reasons = f"; left out: {'; '.join(left_out)}" if left_out else ""
    raise ValueError(f"{len(budgets)} compute budget(s) with a minimum (runs within "
                     f"{GROUP_GAP}x in C = 6ND are one budget): a power law needs 2{reasons}")
  log_C = np.log([b.C for b in budgets])
  a, log_k_N = np.polyfit(log_C, np.log([b.N_opt for b in budgets]), 1)
  b, log_k_D = np.polyfit(log_C, np.log([b.D_opt for b in budgets]), 1)
  return IsoFLOPFit(a=float(a), b=float(b), k_N=math.exp(log_k_N), k_D=math.exp(log_k_D),
                    budgets=budgets, n=len(L), left_out=left_out)


def _budget(N, D, L, runs: np.ndarray) -> Budget:
  N, D, L = N[runs], D[runs], L[runs]
  C = float(np.exp(np.mean(np.log(6 * N * D))))
  if len(np.unique(N)) < 3:
    raise ValueError(f"budget C={C:.3g}: {len(np.unique(N))} model size(s), a parabola in "
                     "log N needs 3")
  p0, p1, p2 = np.polyfit(np.log(N), L, 2)
  if p0 <= 0:
    raise ValueError(f"budget C={C:.3g}: no minimum in log N (the parabola opens downwards)")
  N_opt = math.exp(-p1 / (2 * p0))
  return Budget(C=C, n=len(L), runs=tuple(int(i) for i in runs),
                parabola=(float(p0), float(p1), float(p2)), N_opt=N_opt, D_opt=C / (6 * N_opt),
                loss=float(p2 - p1**2 / (4 * p0)), inside=bool(N.min() <= N_opt <= N.max()))
