"""Time to val loss 1.89 on tinyshakespeare at the CPU recipe's size, as fast as we can.

Same size as configs/shakespeare_char_cpu.py (4 layers, 4 heads, 128 wide, context 64,
batch 12, ~0.8 M parameters) with the Llama-style block of configs/llama_char_cpu.py and
a 3x higher learning rate on a shorter cosine (800 steps); stops at the first evaluation
with val loss <= 1.89 (train.target_val_loss).

Command:
  treadle-train --config configs/shakespeare_fast_cpu.py --workdir runs/fast \
      --config.data.path=../shared/data/tinyshakespeare/input.txt
Measured: experiments/bench/README.md ("Wall time to val loss 1.89").
"""
import ml_collections

from treadle.configs import llama_char_cpu


def get_config() -> ml_collections.ConfigDict:
  c = llama_char_cpu.get_config()
  c.optimizer.learning_rate = 3e-3
  c.optimizer.min_learning_rate = 3e-4
  c.train.num_steps = 800
  c.train.eval_every = 100
  c.train.target_val_loss = 1.89
  return c
