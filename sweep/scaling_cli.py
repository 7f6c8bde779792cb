"""treadle-scaling: scaling-law fits of finished runs (docs/sweeps.md, "Scaling laws").

  treadle-scaling fit TABLE|SWEEPDIR [--exclude_highest K] [--bootstrap N] [--seed S]
                  [--starts N] [--json] [--out FILE.png | --noplot]
  treadle-scaling isoflop SWEEPDIR|TABLE [--json] [--out FILE.png | --noplot]

fit: L(N, D) = E + A/N^alpha + B/D^beta by Chinchilla's approach 3 (sweep/scaling.py), with
95% bootstrap intervals; isoflop: approach 2, a parabola in log N per compute budget, then
power laws through the minima. TABLE is a CSV with columns params, tokens, loss; a sweep
directory gives N, D and the final val loss of each finished run (sweep/scaling_data.py).
The plot goes to --out (default DIR/scaling_fit.png or DIR/isoflop.png for a directory,
TABLE's name with _fit.png or _isoflop.png beside a table). Exit 2 on bad input, one line.
"""
import json
import pathlib
import sys

from absl import flags

from treadle.common import entry
from treadle.sweep import scaling_data

# scaling (scipy) and scaling_plots (matplotlib) are imported once the input has been read:
# a bad table is reported in well under a second

_EXCLUDE = flags.DEFINE_integer("exclude_highest", 0, "fit: leave out the K highest-loss runs.",
                                lower_bound=0)
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 0, "fit: resamples for 95% intervals (0: none).",
                                  lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "fit: seed of the bootstrap resampling.")
_STARTS = flags.DEFINE_integer("starts", None, "fit: L-BFGS runs from this many grid points, "
                               "those of lowest objective (default 100; 0: all 4,500).",
                               lower_bound=0)
_JSON = flags.DEFINE_bool("json", False, "Print the result as one JSON object.")
_OUT = flags.DEFINE_string("out", None, "PNG to write (default: see the module docstring).")
_PLOT = flags.DEFINE_bool("plot", True, "Write the plot (--noplot: don't).")
_FIT_ONLY = ("exclude_highest", "bootstrap", "seed", "starts")
USAGE = ("usage: treadle-scaling fit TABLE|SWEEPDIR [--exclude_highest K] [--bootstrap N] "
         "[--seed S] [--starts N] [--json] [--out FILE.png | --noplot]  |  "
         "treadle-scaling isoflop SWEEPDIR|TABLE [--json] [--out FILE.png | --noplot]")


def plot_path(source: pathlib.Path, command: str) -> pathlib.Path | None:
  """Where the plot goes (None: --noplot); checked before the fit."""
  if not _PLOT.value:
    return None
  if _OUT.value:
    path = pathlib.Path(_OUT.value)
  elif source.is_dir():
    path = source / ("scaling_fit.png" if command == "fit" else "isoflop.png")
  else:
    path = source.with_name(f"{source.stem}_{command}.png")
  if not path.parent.is_dir():
    entry.fail(f"--out {str(path)!r}: no such directory {str(path.parent)!r}")
  return path


def _note_skipped(runs: scaling_data.Runs) -> None:
  if runs.skipped:
    print(f"note: left out {len(runs.skipped)} unfinished run(s): {', '.join(runs.skipped)}",
          file=sys.stderr)


def _fit(source: pathlib.Path) -> None:
  with entry.one_line_errors():
    runs = scaling_data.load(source)
    kept = scaling_data.kept(runs.loss, _EXCLUDE.value)
  path = plot_path(source, "fit")
  _note_skipped(runs)
  from treadle.sweep import scaling  # noqa: PLC0415
  from treadle.sweep import scaling_plots  # noqa: PLC0415
  starts = scaling.DEFAULT_STARTS if _STARTS.value is None else _STARTS.value
  try:
    result = scaling.fit(runs.params, runs.tokens, runs.loss, _EXCLUDE.value, _BOOTSTRAP.value,
                         _SEED.value, starts)
  except ArithmeticError as e:  # good input, no fit: exit 1
    entry.fail(str(e), 1)
  if _JSON.value:
    print(json.dumps(result.to_json()))
  else:
    print(_fit_text(result, source))
  if path:
    scaling_plots.plot_fit(result, runs.params, runs.tokens, runs.loss, kept, path)
    print(f"wrote {path}", file=sys.stderr if _JSON.value else sys.stdout)


def _fit_text(result, source: pathlib.Path) -> str:
  left_out = (f" (the {_EXCLUDE.value} highest losses left out)" if _EXCLUDE.value else "")
  lines = [f"approach 3 fit of {result.n} runs{left_out} from {source}:",
           "  L(N, D) = E + A/N^alpha + B/D^beta; N_opt ~ C^a, D_opt ~ C^b at C = 6ND"]
  values = result.to_json()
  for name in [k for k in values if k not in ("ci", "n")]:
    interval = values["ci"].get(name)
    ci = f"   95% [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
    lines.append(f"  {name:<6} {values[name]:<10.4g}{ci}".rstrip())
  return "\n".join(lines)


def _isoflop(source: pathlib.Path) -> None:
  present = [f"--{name}" for name in _FIT_ONLY if flags.FLAGS[name].present]
  if present:
    entry.fail(f"{', '.join(present)}: only for treadle-scaling fit")
  with entry.one_line_errors():
    runs = scaling_data.load(source)
    from treadle.sweep import scaling  # noqa: PLC0415
    result = scaling.isoflop(runs.params, runs.tokens, runs.loss)
  path = plot_path(source, "isoflop")
  from treadle.sweep import scaling_plots  # noqa: PLC0415
  _note_skipped(runs)
  for reason in result.left_out:
    print(f"warning: left out {reason}", file=sys.stderr)
  for budget in result.budgets:
    if not budget.inside:
      print(f"warning: budget C={budget.C:.3g}: the minimum N_opt={budget.N_opt:.3g} lies "
            "outside the sizes tried (extrapolated)", file=sys.stderr)
  if _JSON.value:
    print(json.dumps(result.to_json()))
  else:
    print(_isoflop_text(result, source))
  if path:
    scaling_plots.plot_isoflop(result, runs.params, runs.loss, path)
    print(f"wrote {path}", file=sys.stderr if _JSON.value else sys.stdout)


def _isoflop_text(result, source: pathlib.Path) -> str:
  lines = [f"approach 2 (IsoFLOP) fit of {result.n} runs in {len(result.budgets)} budgets "
           f"from {source}:", f"  {'C (FLOPs)':<11} {'runs':>4}  {'N_opt':<10} {'D_opt':<10} loss"]
  lines += [f"  {b.C:<11.4g} {b.n:>4}  {b.N_opt:<10.4g} {b.D_opt:<10.4g} {b.loss:.4f}"
            for b in result.budgets]
  lines.append(f"  N_opt = {result.k_N:.4g} C^{result.a:.4f}, "
               f"D_opt = {result.k_D:.4g} C^{result.b:.4f}")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) != 3 or argv[1] not in ("fit", "isoflop"):
    entry.fail(USAGE)
  (_fit if argv[1] == "fit" else _isoflop)(pathlib.Path(argv[2]))


def run() -> None:
  """Console-script entry point."""
  entry.run(main)


if __name__ == "__main__":
  run()
