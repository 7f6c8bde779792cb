"""Supervised fine-tuning of a trained or imported model: loss on the answers only.

Command (RUN: a treadle run or a treadle-import-hf directory; rows.jsonl: one
{"prompt", "completion"} or {"messages": [...]} object per line):
  treadle-train --config configs/sft.py --workdir runs/sft \
      --config.train.init_from=RUN --config.data.path=rows.jsonl
The model and tokenizer are RUN's; add --config.finetune.lora_rank=8 for LoRA.
Worked example with its figures: experiments/post_training/README.md.
"""
import ml_collections

from treadle.configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config("sft")
  c.train.num_steps = 300
  c.train.batch_size = 16
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  c.optimizer.learning_rate = 3e-4
  c.optimizer.min_learning_rate = 3e-5
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.0
  return c
