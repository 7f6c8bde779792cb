"""The IsoFLOP study of sweep.py at peak learning rate 0.01 instead of the recipe's 1e-3.

At 1e-3 every budget's loss fell toward its smallest model (README.md): short runs of the
larger models were far from trained. 0.01 is where the learning-rate x width sweep
(experiments/mup) found the optimum for these widths at 300 steps. The shapes are sweep.py's:
widths 16-128, 4 layers, 0.8 to 400 tokens per non-embedding parameter, 5 or 6 a budget.

Command (from the repository root), then the fits:
  treadle-sweep experiments/scaling/sweep_lr.py --parallel 2
  treadle-scaling isoflop runs/sweeps/isoflop_char_lr
  treadle-scaling fit runs/sweeps/isoflop_char_lr --bootstrap 1000
"""
import dataclasses
import pathlib

from treadle.sweep import spec


def get_sweep() -> spec.Sweep:
  study = spec.load(pathlib.Path(__file__).with_name("sweep.py"))
  return dataclasses.replace(study, name="isoflop_char_lr",
                             fixed={**study.fixed, "optimizer.learning_rate": 0.01})
