"""Learning rate x width on nanoGPT's Shakespeare CPU recipe, 600 steps (README.md: results).

Command (from the repository root; 13 minutes measured on 2 CPU cores shared with other jobs):
  treadle-sweep experiments/lr_width/sweep.py
"""
from treadle.sweep import spec


def get_sweep() -> spec.Sweep:
  return spec.Sweep(
      name="lr_width",
      base_config="configs/shakespeare_char_cpu.py",
      fixed={
          "data.path": "../shared/data/tinyshakespeare/input.txt",
          "train.num_steps": 600,      # the recipe's 2000 cut so 8 runs fit in ~10 min on 2 cores
          "train.eval_every": 100,     # six points per validation curve
      },
      axes=[spec.Grid({
          "optimizer.learning_rate": [3e-4, 1e-3, 3e-3, 1e-2],
          "model.embed_dim": [64, 128],  # 4 heads: head size 16 or 32
      })],
  )
