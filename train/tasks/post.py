"""What the post-training tasks (sft, dpo, grpo) share: the model and tokenizer inherited from
train.init_from, per-token log-probabilities, and the frozen reference model.

The reference is the init_from model. With LoRA it is the run's own parameters with the
adapters left out (zero adapters: no second copy of the weights); without LoRA, the source's
parameters, loaded once next to the trained ones.
"""
import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx

from treadle.configs import base
from treadle.data import post as rows
from treadle.data import tokenizers
from treadle.model import axes
from treadle.model import lora
from treadle.model import moe
from treadle.train import config as config_lib
from treadle.train import finetune
from treadle.train import mesh as mesh_lib
from treadle.train import state as state_lib
from treadle.train.tasks import base as task_base

class PostTrainingTask(task_base.Task):
  """What sft, dpo and grpo share beyond their data and loss: rows (data/post.py) batched by
  Grain, the inherited tokenizer saved for inference, the starting model evaluated first."""
  unit = "tokens"
  evaluate_before_training = True  # the init_from model: the baseline of the curves

  def save_artifact(self, splits: task_base.Splits, workdir: pathlib.Path) -> None:
    tokenizers.save(splits.artifact, workdir)

  def train_iterator(self, split, cfg, process_index: int, process_count: int):
    return rows.train_iterator(split, cfg.train.batch_size, cfg.train.seed, process_index,
                               process_count)

  def eval_batches(self, split, cfg, process_index: int, process_count: int) -> list[dict]:
    return rows.fixed_batches(split, cfg.train.batch_size, cfg.train.eval_batches,
                              process_index, process_count)

  def finish(self, run, params, step: int) -> dict:
    return {}


# model fields a post-training run may set for itself (the rest are the source model's)
_OWN_FIELDS = {"dropout", "remat", "lora_rank", "lora_alpha", "lora_targets"}


def inherit(cfg: config_lib.RunConfig, workdir: pathlib.Path, init_dir: pathlib.Path | None):
  """(config whose model is train.init_from's, tokenizer: the workdir's on resume, else the
  source's). A model key set to something else than both its base value and the source's is a
  one-line error: post-training cannot change the architecture it starts from."""
  if init_dir is None:
    raise ValueError(f"task={cfg.task} needs train.init_from: a treadle run or an imported "
                     "model (treadle-import-hf) to post-train")
  source = config_lib.from_json(init_dir / "config.json")
  if source.task not in base.DECODER_TASKS:
    raise ValueError(f"train.init_from={cfg.train.init_from!r} is a task={source.task} run, "
                     "not a language model")
  defaults = config_lib.section("model")
  for field in dataclasses.fields(source.model):
    name, mine = field.name, getattr(cfg.model, field.name)
    if (name not in _OWN_FIELDS and mine != getattr(defaults, name)
        and mine != getattr(source.model, name)):
      raise ValueError(f"model.{name}={mine!r}: the model comes from train.init_from "
                       f"(its {name} is {getattr(source.model, name)!r}); leave model.{name} unset")
  model = dataclasses.replace(source.model, **{k: getattr(cfg.model, k) for k in _OWN_FIELDS})
  data = cfg.data
  if hasattr(data, "seq_len"):  # 0 = the model's context; longer ones it cannot attend over
    data = dataclasses.replace(data, seq_len=data.seq_len or model.max_seq_len)
    if data.seq_len > model.max_seq_len:
      raise ValueError(f"data.seq_len={data.seq_len} exceeds the model's context "
                       f"(max_seq_len {model.max_seq_len})")
  own = workdir / tokenizers.FILENAME
  tokenizer = tokenizers.load(workdir if own.exists() else init_dir)
  return dataclasses.replace(cfg, model=model, data=data), tokenizer


def token_logprobs(model, inputs_BT, targets_BT, positions_BT=None, segment_ids_BT=None,
                   dropout_key=None) -> jax.Array:
  """log p(target_t | inputs_<=t) per position, float32 [B, T]."""
  return policy_logprobs(model, inputs_BT, targets_BT, positions_BT, segment_ids_BT,
                         dropout_key)[0]


def policy_logprobs(model, inputs_BT, targets_BT, positions_BT=None, segment_ids_BT=None,
                    dropout_key=None) -> tuple[jax.Array, dict | None]:
  """(token_logprobs, the MoE blocks' router statistics or None for a dense model)."""
  logits_BTV, _, stats = model.forward(inputs_BT, positions_BT=positions_BT,
                                       segment_ids_BT=segment_ids_BT, dropout_key=dropout_key)
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0], stats


def with_router_losses(model, loss_and_metrics: tuple[jax.Array, dict], stats, training: bool
                       ) -> tuple[jax.Array, dict]:
  """An MoE policy trains on its objective + the router losses, as pre-training does (the
  load-balancing term keeps fine-tuning from collapsing the routing); the objective alone is
  logged as `objective`, with the router metrics. Evaluation scores the objective only."""
  return moe.with_router_losses(model.cfg, *loss_and_metrics, stats, training, "objective")


def without_adapters(params):
  """The LoRA model's parameters with zero adapters: the function of its frozen base."""
  mask = lora.trainable_mask(params)
  return jax.tree.map(lambda p, adapter: jnp.zeros_like(p) if adapter else p, params, mask)


class Reference:
  """The frozen init_from model: `logprobs(params, fields...)` -> [B, T] under jit, where
  `params` are the trained ones (LoRA: used without adapters; else ignored)."""

  def __init__(self, run, forward):
    """`forward(model, batch) -> logprobs` picks the batch fields it scores."""
    cfg = run.cfg
    self._lora = bool(cfg.model.lora_rank)
    self._graphdef = state_lib.model_graph(cfg.model)[0]
    rules = mesh_lib.rules(cfg.mesh.rules)
    self._frozen = None
    if not self._lora:
      self._frozen = finetune.source_params(cfg, run.mesh, rules, run.state_shardings.params)

    def score(params, frozen, batch):
      with axes.activation_rules(rules, run.mesh):
        weights = without_adapters(params) if self._lora else frozen
        return forward(nnx.merge(self._graphdef, weights), batch)
    # outputs split like the batches they join (the steps' in_shardings)
    self._one = jax.jit(score, out_shardings=run.batch_sharding)
    self._stacked = jax.jit(
        lambda p, f, s: jax.lax.map(functools.partial(score, p, f), s),
        out_shardings=mesh_lib.stacked_batch_sharding(run.mesh))

  def logprobs(self, params, batch: dict):
    """forward's outputs on one global batch."""
    return self._one(params, self._frozen, batch)

  def stacked_logprobs(self, params, stacked: dict):
    """forward's outputs on each batch of an evaluation set stacked on a leading axis."""
    return self._stacked(params, self._frozen, stacked)
