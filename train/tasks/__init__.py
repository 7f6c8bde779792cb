"""Tasks: what the trainer needs to know about a problem beyond the generic loop.

base.py holds the Task protocol; lm.py (language modelling) and image.py (image
classification) implement it. Neither imports the other, nor this package's registry.
"""
from treadle.train.tasks import base
from treadle.train.tasks import image
from treadle.train.tasks import lm

Splits = base.Splits
Task = base.Task
_REGISTRY = {"lm": lm.LanguageModeling, "classify": image.ImageClassification}


def get(name: str) -> base.Task:
  """The task object for config key `task`."""
  if name not in _REGISTRY:
    raise ValueError(f"task={name!r} is not one of {sorted(_REGISTRY)}")
  return _REGISTRY[name]()
