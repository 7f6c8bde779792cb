"""Fine-tune a model imported with treadle-import-hf: the imported run's own config (its
model options and `hf` tokenizer), with train.init_from pointing at it.

Command (full fine-tuning, or LoRA with finetune.lora_rank):
  treadle-train --config configs/imported.py:runs/gpt2 --workdir runs/gpt2_sonnets \
      --config.data.path=sonnets.txt --config.finetune.lora_rank=8 --config.train.num_steps=200
The model section is the imported model's and must stay so (init_from checks it); data,
optimizer, train, mesh and finetune keys are overridden as in any run.
"""
import json
import pathlib

import ml_collections


def get_config(workdir: str) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    # ValueError: the CLI turns it into a one-line error with exit code 2
    raise ValueError(f"configs/imported.py:{workdir}: no config.json (import a model first)")
  c = ml_collections.ConfigDict(json.loads(path.read_text()))
  c.train.init_from = str(workdir)
  return c
