"""A top-2-of-8 mixture of experts on nanoGPT's CPU recipe (configs/shakespeare_char_cpu.py),
with the same active parameters: each token uses 2 experts of hidden 256, as the dense recipe's
one MLP of hidden 512 (the router adds 8 x 128 weights per block).

Command:
  treadle-train --config configs/moe_char_cpu.py --workdir runs/moe \
      --config.data.path=../shared/data/tinyshakespeare/input.txt
Measured on tinyshakespeare (2-core Zen 3 EPYC, no AVX-512, 2026-12-07), val loss at step 2000
over the whole validation split: seed 1337 (default) 1.8279 | seed 0 1.8106 | seed 1 1.8215 |
mean 1.8200, against the dense recipe's 1.8836 run back to back (1.8899 | 1.8801 | 1.8808).
A step costs 1.92x the dense recipe's (measured side by side in one process), so at equal wall
time dense is ahead; the MoE reaches dense's final loss in ~1.4x its time. Everything, with
load balance and expert parallelism: experiments/moe/README.md (bash experiments/moe/run.sh).
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
