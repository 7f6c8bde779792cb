"""Learning rate x width under sp and under mup on the Shakespeare CPU recipe (README.md).

The recipe (4 layers, 4 heads, context 64, batch 12, AdamW, warmup 100, cosine) at widths 32,
64, 128 and 256 with mup's base width 32, 300 steps, peak learning rates on a factor-2 grid.
Global-norm clipping is off: the norm sums over every parameter, so it grows with the width
and would clip wide models more (not part of either parametrization).

Command (from the repository root; 21 minutes on 2 idle Zen 4 cores):
  treadle-sweep experiments/mup/sweep.py --parallel 2
  python experiments/mup/report.py runs/sweeps/mup
"""
from treadle.sweep import spec


def get_sweep() -> spec.Sweep:
  return spec.Sweep(
      name="mup",
      base_config="configs/shakespeare_char_cpu.py",
      fixed={
          "data.path": "../shared/data/tinyshakespeare/input.txt",
          "train.num_steps": 300,
          "train.eval_every": 100,
          "train.eval_batches": 20,
          "optimizer.grad_clip_norm": 0.0,
          "model.mup_base_width": 32,
      },
      axes=[spec.Grid({
          "model.parametrization": ["sp", "mup"],
          "model.embed_dim": [32, 64, 128, 256],
          "optimizer.learning_rate": [0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04],
      })],
  )
