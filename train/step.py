"""The only jitted training code: a pure train step and an eval step, for any task."""
import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from treadle.model import axes
from treadle.model import lora
from treadle.train import mesh as mesh_lib
from treadle.train import state as state_lib

if TYPE_CHECKING:  # annotations only: the jitted-step module never imports a data stack
  from treadle.train.tasks import base

Batch = dict[str, jax.Array]


# A task's loss metric "weight": its loss is a mean over that many units (answer tokens,
# pairs). Micro-batches and evaluation batches then combine by it, so an update of two
# micro-batches is the update of one batch holding both, whatever their token counts.
WEIGHT = "weight"


def _loss(task, graphdef: nnx.GraphDef, params: Any, batch: Batch, dropout_key,
          training: bool = True):
  """(loss, metrics) of the task on one batch."""
  params = lora.stop_base_gradients(params)  # LoRA: only adapters get gradients
  return task.loss(nnx.merge(graphdef, params), batch, dropout_key, training=training)


def _weighted_loss(task, graphdef, params, batch: Batch, dropout_key):
  """(loss x weight, (metrics x weight, weight)): sums that add across micro-batches."""
  loss, aux = _loss(task, graphdef, params, batch, dropout_key)
  aux = dict(aux)
  weight = jax.lax.stop_gradient(aux.pop(WEIGHT, jnp.float32(1.0))).astype(jnp.float32)
  return loss * weight, (jax.tree.map(lambda v: v * weight, aux), weight)


def _accumulated_grads(task, graphdef, params, batch: Batch, key, accum_steps: int,
                       use_dropout: bool):
  """Mean loss, metrics and gradient over `accum_steps` micro-batches, scanned (one update),
  each micro-batch weighing its loss's "weight" (default 1)."""
  if accum_steps == 1:
    grad_fn = jax.value_and_grad(functools.partial(_loss, task, graphdef), has_aux=True)
    (loss, aux), grads = grad_fn(params, batch, key if use_dropout else None)
    return (loss, {k: v for k, v in aux.items() if k != WEIGHT}), grads
  grad_fn = jax.value_and_grad(functools.partial(_weighted_loss, task, graphdef), has_aux=True)

  # micro-batch a takes rows a, a+A, ...: each device keeps its own rows (no resharding)
  def split(x):
    return jnp.moveaxis(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 1, 0)
  micro = jax.tree.map(split, batch)

  def body(carry, xs):
    index, mb = xs
    k = jax.random.fold_in(key, index) if use_dropout else None
    out = grad_fn(params, mb, k)
    return jax.tree.map(jnp.add, carry, out), None

  zeros = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro),
                         key if use_dropout else None)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
  ((loss, (aux, weight)), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
  per = lambda x: x / jnp.maximum(weight, 1e-9)  # all weights 0 (no answer token): no update
  return (per(loss), jax.tree.map(per, aux)), jax.tree.map(per, grads)


def train_step(state: state_lib.TrainState, batch: Batch, *, task, graphdef, tx, schedule,
               accum_steps: int, use_dropout: bool, rules, mesh
               ) -> tuple[state_lib.TrainState, dict]:
  """One optimizer update. A non-finite loss or gradient leaves params and moments untouched."""
  with axes.activation_rules(rules, mesh):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, aux), grads = _accumulated_grads(task, graphdef, state.params, batch, key,
                                            accum_steps, use_dropout)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = state_lib.TrainState(step=state.step + 1, params=keep(new_params, state.params),
                                     opt_state=keep(new_opt_state, state.opt_state), rng=state.rng)
    metrics = {"train_loss": loss, "grad_norm": grad_norm, "finite": finite,
               "learning_rate": schedule(state.step),
               **{f"train_{k}": v for k, v in aux.items()}}
    return new_state, metrics


def eval_step(params: Any, batches: Batch, *, task, graphdef, rules, mesh) -> dict:
  """Mean loss and metrics (no dropout) over the examples of batches stacked on a leading
  axis, in one program.

  One program for the whole evaluation: many small programs holding collectives can
  interleave differently on XLA:CPU's simulated devices and deadlock its all-reduce.
  """
  def body(carry, batch):
    total, count = carry
    loss, aux = _loss(task, graphdef, params, batch, None, training=False)
    aux = dict(aux)
    # a loss over weighted units (answer tokens) counts them; else batches padded with
    # zero-weight examples count only their real examples
    n = aux.pop(WEIGHT) if WEIGHT in aux else (
        batch["weights"].sum() if "weights" in batch else jnp.float32(
            jax.tree.leaves(batch)[0].shape[0]))
    total = jax.tree.map(lambda t, v: t + v * n, total, {"loss": loss, **aux})
    return (total, count + n), None

  with axes.activation_rules(rules, mesh):
    first = jax.tree.map(lambda x: x[0], batches)
    shapes = jax.eval_shape(lambda b: _loss(task, graphdef, params, b, None, training=False),
                            first)
    zeros = {"loss": jnp.zeros((), jnp.float32),
             **{k: jnp.zeros(v.shape, v.dtype) for k, v in shapes[1].items() if k != WEIGHT}}
    (total, count), _ = jax.lax.scan(body, (zeros, jnp.float32(0)), batches)
    return jax.tree.map(lambda x: x / count, total)


def compile_steps(task: "base.Task", graphdef, tx, schedule, accum_steps: int,
                  use_dropout: bool, rules, state_shardings: state_lib.TrainState,
                  batch_sharding):
  """Jitted (train_step, eval_step) of `task`'s loss, with explicit shardings; the train
  state is donated.

  `batch_sharding` splits dim 0 of every batch array (a tree prefix for the batch dict).
  """
  replicated = state_shardings.step
  mesh = replicated.mesh
  train = jax.jit(
      functools.partial(train_step, task=task, graphdef=graphdef, tx=tx, schedule=schedule,
                        accum_steps=accum_steps, use_dropout=use_dropout, rules=rules,
                        mesh=mesh),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, task=task, graphdef=graphdef, rules=rules,
                                       mesh=mesh),
                     in_shardings=(state_shardings.params, mesh_lib.stacked_batch_sharding(mesh)),
                     out_shardings=replicated)
  return train, evaluate
