"""treadle-sweep: expand a sweep file into trials, train them, and report.

  treadle-sweep experiments/NAME/sweep.py [--parallel N] [--only REGEX] [--root DIR]
  treadle-sweep experiments/NAME/sweep.py --dry_run        # list trials and commands
  treadle-sweep experiments/NAME/sweep.py --report         # table and plots only
  treadle-sweep experiments/NAME/sweep.py --emit slurm     # ROOT/sweep.sbatch

--only selects the trials to run, list or emit; the report always covers the whole sweep.
Rerunning skips finished trials and resumes the others. Exit codes: 0 every trial run here
finished (or was already), 1 some failed, 2 bad input, 75 interrupted by SIGTERM/SIGINT.
"""
import json
import pathlib
import re
import shlex
import sys

from absl import flags

from treadle.sweep import report
from treadle.sweep import runner
from treadle.sweep import slurm
from treadle.sweep import spec
from treadle.common import entry
from treadle.train import interrupts

_PARALLEL = flags.DEFINE_integer("parallel", 1, "Trials trained at once.", lower_bound=1)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the trials and their commands only.")
_ONLY = flags.DEFINE_string("only", None, "Only the trials whose name matches this regex.")
_REPORT = flags.DEFINE_bool("report", False, "Write the report only (no training).")
_EMIT = flags.DEFINE_enum("emit", None, ["slurm"], "Write a cluster script instead of training.")
_SBATCH = flags.DEFINE_multi_string("sbatch", [], "Extra #SBATCH line for --emit slurm, e.g. "
                                    "--sbatch='--gpus=1' (repeatable).")
_ROOT = flags.DEFINE_string("root", None, "Sweep output directory (default runs/sweeps/NAME).")


def _select(trials: list[spec.Trial]) -> list[spec.Trial]:
  if _ONLY.value is None:
    return trials
  try:
    pattern = re.compile(_ONLY.value)
  except re.error as e:
    entry.fail(f"--only={_ONLY.value!r}: {e}")
  selected = [t for t in trials if pattern.search(t.name)]
  if not selected:
    entry.fail(f"--only={_ONLY.value!r} matches none of {[t.name for t in trials]}")
  return selected


def _dry_run(sweep: spec.Sweep, trials: list[spec.Trial], layout: runner.Layout) -> None:
  print(f"{sweep.name}: {len(trials)} trials under {layout.root}")
  for trial in trials:
    argv = runner.command(sweep, trial, layout)
    done = runner.is_finished(runner.read_metrics(layout.workdir(trial.name)),
                              runner.read_status(layout, trial.name), argv)
    print(f"{trial.index}\t{trial.name}\t{'finished' if done else 'to run'}\t{shlex.join(argv)}")


def _record(sweep: spec.Sweep, trials: list[spec.Trial], layout: runner.Layout) -> None:
  """ROOT/sweep.json: the expansion, for the record."""
  layout.root.mkdir(parents=True, exist_ok=True)
  data = {"name": sweep.name, "base_config": sweep.base_config, "fixed": sweep.fixed,
          "trials": [{"name": t.name, "overrides": t.overrides,
                      "command": runner.command(sweep, t, layout)} for t in trials]}
  (layout.root / "sweep.json").write_text(json.dumps(data, indent=1))


def _report(sweep, trials, layout, sweep_file: str) -> None:
  paths = report.write(sweep, trials, layout, sweep_file)
  print(paths[0].read_text())
  print("wrote " + ", ".join(str(p) for p in paths))


def main(argv) -> None:
  if len(argv) != 2:
    entry.fail("usage: treadle-sweep SWEEP_FILE [--parallel N] [--dry_run] [--only REGEX] "
         "[--report] [--emit slurm] [--root DIR]")
  try:
    sweep = spec.load(argv[1])
    all_trials = spec.expand(sweep)
  except spec.SweepError as e:
    entry.fail(str(e))
  layout = runner.Layout(pathlib.Path(_ROOT.value or f"runs/sweeps/{sweep.name}"))
  trials = _select(all_trials)
  if _DRY_RUN.value:
    return _dry_run(sweep, trials, layout)
  if _EMIT.value == "slurm":
    _record(sweep, all_trials, layout)
    print(slurm.write(sweep, trials, layout, _SBATCH.value))
    return
  if not _REPORT.value:
    _record(sweep, all_trials, layout)
    outcomes = runner.run(sweep, trials, layout, _PARALLEL.value,
                          say=lambda line: print(line, flush=True))
  _report(sweep, all_trials, layout, argv[1])
  if _REPORT.value:
    return
  if "interrupted" in outcomes.values() or "not started" in outcomes.values():
    sys.exit(interrupts.EXIT_CODE)
  if "failed" in outcomes.values():
    sys.exit(1)


def run() -> None:
  """Console-script entry point."""
  entry.run(main)


if __name__ == "__main__":
  run()
