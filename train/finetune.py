"""Fine-tuning from another run's checkpoint: full (all parameters) or LoRA (adapters only).

train.init_from names the source run (or one of its step directories). Its parameters are
read (never its optimizer state); a LoRA source is merged first, so its adapters become
part of the new run's base weights. With finetune.lora_rank > 0 the base is frozen: the
optimizer gives it zero updates and the loss stops its gradients (no weight-gradient work).
"""
import dataclasses
import logging

import jax
import optax

from treadle.model import lora
from treadle.train import checkpoint
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib

log = logging.getLogger("treadle")
# model fields a fine-tuning run may change: regularisation, memory layout, its own adapters
_MAY_DIFFER = {"dropout", "remat", "lora_rank", "lora_alpha", "lora_targets"}


def check_source(cfg: config_lib.RunConfig) -> None:
  """The source must have this run's model shapes; raises a one-line ValueError otherwise."""
  if not cfg.train.init_from:
    return
  src_dir, _ = checkpoint.locate(cfg.train.init_from)
  src_model = config_lib.from_json(src_dir / "config.json").model
  diff = [f.name for f in dataclasses.fields(src_model) if f.name not in _MAY_DIFFER
          and getattr(src_model, f.name) != getattr(cfg.model, f.name)]
  if diff:
    raise ValueError(f"train.init_from={cfg.train.init_from!r}: model differs in "
                     f"{', '.join(diff)}")


def source_params(cfg: config_lib.RunConfig, mesh, rules, base_shardings):
  """The source run's parameters (adapters merged) in this run's base-parameter shardings."""
  src_dir, step = checkpoint.locate(cfg.train.init_from)
  src_model = config_lib.from_json(src_dir / "config.json").model
  params, step = checkpoint.load_params(
      src_dir, step, src_model, lambda _, specs: mesh_lib.param_shardings(specs, mesh, rules))
  log.info("fine-tuning from %s step %d (parameters only)", src_dir, step)
  if getattr(src_model, "lora_rank", 0):  # only decoders have adapters
    params = jax.jit(lambda p: lora.merge(p, src_model)[0], out_shardings=base_shardings)(params)
  return params


def freeze_base(tx: optax.GradientTransformation, params_like) -> optax.GradientTransformation:
  """Adapters get `tx`; every base parameter gets a zero update (and no optimizer state)."""
  labels = jax.tree.map(lambda t: "adapter" if t else "frozen", lora.trainable_mask(params_like))
  return optax.partition({"adapter": tx, "frozen": optax.set_to_zero()}, labels)
