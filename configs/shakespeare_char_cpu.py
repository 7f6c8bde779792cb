"""nanoGPT's documented CPU recipe: a 4-layer character GPT on Shakespeare.

Command:
  treadle-train --config configs/shakespeare_char_cpu.py --workdir runs/cpu \
      --config.data.path=../shared/data/tinyshakespeare/input.txt
Measured on tinyshakespeare (this 2-core CPU, 2026-11-24), val loss at step 2000 over the
whole validation split (the 5% after the 90% training text):
  seed 1337 (default) 1.8909 (test 1.9244) | seed 0 1.8832 (test 1.9272) |
  seed 1 1.8864 (test 1.9192) | mean of the three 1.8868; nanoGPT reports 1.886.
Wall time: 113 s for the whole command (nanoGPT: 112 s for 2000 steps on this machine).
"""
import ml_collections

from treadle.configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config("lm")  # the base LM is this recipe's model, data and optimizer
  c.train.seed = 1337             # nanoGPT's seed (the measured result above)
  return c
