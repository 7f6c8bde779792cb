"""A top-2-of-8 mixture of experts on nanoGPT's CPU recipe (configs/shakespeare_char_cpu.py),
with the same active parameters: each token uses 2 experts of hidden 256, as the dense recipe's
one MLP of hidden 512 (the router adds 8 x 128 weights per block).

Command:
  treadle-train --config configs/moe_char_cpu.py --workdir runs/moe \
      --config.data.path=../shared/data/tinyshakespeare/input.txt
Measured: see experiments/moe/README.md.
"""
import ml_collections

from treadle.configs import shakespeare_char_cpu


def get_config() -> ml_collections.ConfigDict:
  c = shakespeare_char_cpu.get_config()
  c.model.num_experts = 8
  c.model.experts_per_token = 2
  c.model.moe_hidden_dim = 256    # 2 active experts x 256 = the dense recipe's 512
  c.model.router_aux_loss_coef = 0.01
  return c
