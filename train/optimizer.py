"""AdamW with linear warmup, cosine decay and global-norm clipping."""
import jax
import optax

from train import config as config_lib


def schedule(cfg: config_lib.OptimizerConfig, num_steps: int) -> optax.Schedule:
  """Warmup from peak/(warmup+1) (so the first update is not a no-op), then cosine to min."""
  decay_steps = max(cfg.decay_steps or num_steps, cfg.warmup_steps + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=cfg.learning_rate / (cfg.warmup_steps + 1), peak_value=cfg.learning_rate,
      warmup_steps=cfg.warmup_steps, decay_steps=decay_steps, end_value=cfg.min_learning_rate)


def _decay_mask(params):
  # weight decay on matrices and embeddings only, never on norm scales or biases
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def build(cfg: config_lib.OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adamw(schedule(cfg, num_steps), b1=cfg.beta1, b2=cfg.beta2,
                           weight_decay=cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts)
