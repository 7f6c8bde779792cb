"""A small ViT (2x2 patches, 2 blocks, width 64) on scikit-learn's 8x8 digits.

Command:
  treadle-train --config configs/digits_vit.py --workdir runs/digits_vit
Measured (this 2-core CPU): MEASURED_PLACEHOLDER
"""
import ml_collections

from configs import digits_cnn


def get_config() -> ml_collections.ConfigDict:
  c = digits_cnn.get_config()
  c.model.kind = "vit"
  c.model.dropout = 0.0
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.05
  c.train.num_steps = 1500
  return c
