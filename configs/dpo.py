"""Direct preference optimisation against the frozen init_from model.

Command (RUN: a treadle run or a treadle-import-hf directory, typically after SFT;
pairs.jsonl: one {"prompt", "chosen", "rejected"} object per line):
  treadle-train --config configs/dpo.py --workdir runs/dpo \
      --config.train.init_from=RUN --config.data.path=pairs.jsonl
val_reward_accuracy is the share of held-out pairs whose implicit reward prefers `chosen`.
Worked example with its figures: experiments/post_training/README.md.
"""
import ml_collections

from treadle.configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config("dpo")
  c.dpo.beta = 0.1
  c.train.num_steps = 200
  c.train.batch_size = 32
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  c.optimizer.learning_rate = 5e-4
  c.optimizer.min_learning_rate = 5e-5
  c.optimizer.warmup_steps = 10
  c.optimizer.weight_decay = 0.0
  return c
