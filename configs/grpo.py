"""GRPO: sample groups of completions with the current policy, score them with a reward
program, push the policy toward the better ones.

Command (RUN: a treadle run or a treadle-import-hf directory, typically after SFT;
prompts.jsonl: one {"prompt": str, ...} object per line; every field reaches the reward):
  treadle-train --config configs/grpo.py --workdir runs/grpo \
      --config.train.init_from=RUN --config.rl.prompts=prompts.jsonl \
      --config.rl.reward=path/to/reward.py:function
function(prompt: str, completion: str, example: dict) -> float. train.batch_size is prompts
per step; each samples rl.group_size completions. val_reward_mean: greedy completions of
held-out prompts (val_loss is its negation, which early stopping and keep_best minimise).
Worked example with its figures: experiments/post_training/README.md.
"""
import ml_collections

from treadle.configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config("grpo")
  c.rl.group_size = 16
  c.rl.max_new_tokens = 32
  c.train.num_steps = 150
  c.train.batch_size = 32
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.checkpoint_every = 50
  c.optimizer.learning_rate = 1e-3
  c.optimizer.min_learning_rate = 1e-4
  c.optimizer.warmup_steps = 10
  c.optimizer.weight_decay = 0.0
  return c
