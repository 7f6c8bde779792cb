"""A small IsoFLOP study on the Shakespeare CPU recipe: for each of three compute budgets, the
4-layer widths that spend it in 200 or more steps at 0.8 to 400 tokens per non-embedding
parameter (5 or 6 shapes a budget), each trained for the steps that spend it (README.md:
results and how to fit them).

Command (from the repository root), then the fits:
  treadle-sweep experiments/scaling/sweep.py --parallel 2
  treadle-scaling isoflop runs/sweeps/isoflop_char
  treadle-scaling fit runs/sweeps/isoflop_char --bootstrap 1000
"""
from treadle.sweep import spec


def get_sweep() -> spec.Sweep:
  return spec.Sweep(
      name="isoflop_char",
      base_config="configs/shakespeare_char_cpu.py",
      fixed={
          "data.path": "../shared/data/tinyshakespeare/input.txt",
          "train.eval_every": 500,      # the final validation loss is what the fits read
      },
      axes=[spec.IsoFLOP(
          budgets=[3e11, 1e12, 3e12],   # FLOPs, C = 6 N D with N non-embedding
          widths=[16, 20, 24, 32, 48, 64, 96, 128],  # model.embed_dim (4 heads)
          depths=[4],                   # model.num_layers
          min_steps=200,                # twice the recipe's 100 warmup steps
          tokens_per_param=(0.8, 400.0),  # the optimum lies near 50-100 tokens/param here
      )],
  )
