"""Tasks: what the trainer needs to know about a problem beyond the generic loop.

base.py holds the Task protocol; lm.py (language modelling), image.py (image
classification) and the post-training tasks sft.py, dpo.py and grpo.py (sharing post.py)
implement it. None imports another task, nor this package's registry.
"""
from treadle.train.tasks import base
from treadle.train.tasks import dpo
from treadle.train.tasks import grpo
from treadle.train.tasks import image
from treadle.train.tasks import lm
from treadle.train.tasks import sft

Splits = base.Splits
Task = base.Task
_REGISTRY = {"lm": lm.LanguageModeling, "classify": image.ImageClassification,
             "sft": sft.SupervisedFineTuning, "dpo": dpo.PreferenceOptimization,
             "grpo": grpo.GroupRelativePolicyOptimization}


def get(name: str) -> base.Task:
  """The task object for config key `task`."""
  if name not in _REGISTRY:
    raise ValueError(f"task={name!r} is not one of {sorted(_REGISTRY)}")
  return _REGISTRY[name]()
