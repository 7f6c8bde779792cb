"""GRPO's reward for the addition task, and evaluate.py's exact match: 1.0 when the
completion is the row's "answer" (surrounding whitespace ignored), else 0.0.

  --config.rl.reward=experiments/post_training/reward.py:exact_match
"""


def exact_match(prompt: str, completion: str, example: dict) -> float:
  del prompt  # the answer travels with the row
  return float(completion.strip() == str(example["answer"]))
