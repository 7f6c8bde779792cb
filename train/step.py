"""The only jitted training code: a pure train step and an eval step."""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from model import axes
from model import gpt
from train import mesh as mesh_lib
from train import state as state_lib

Batch = dict[str, jax.Array]


def _loss(graphdef: nnx.GraphDef, params: Any, batch: Batch, dropout_key) -> jax.Array:
  model = nnx.merge(graphdef, params)
  logits_BTV, _ = model(batch["inputs"], dropout_key=dropout_key)
  return gpt.cross_entropy(logits_BTV, batch["targets"])


def _accumulated_grads(graphdef, params, batch: Batch, key, accum_steps: int, use_dropout: bool):
  """Mean loss and gradient over `accum_steps` micro-batches, scanned (one update per step)."""
  grad_fn = jax.value_and_grad(functools.partial(_loss, graphdef))
  if accum_steps == 1:
    return grad_fn(params, batch, key if use_dropout else None)

  # micro-batch a takes rows a, a+A, ...: each device keeps its own rows (no resharding)
  def split(x):
    return jnp.moveaxis(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 1, 0)
  micro = jax.tree.map(split, batch)

  def body(carry, xs):
    loss_sum, grad_sum = carry
    index, mb = xs
    k = jax.random.fold_in(key, index) if use_dropout else None
    loss, grads = grad_fn(params, mb, k)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                  (jnp.arange(accum_steps), micro))
  return loss / accum_steps, jax.tree.map(lambda g: g / accum_steps, grads)


def train_step(state: state_lib.TrainState, batch: Batch, *, graphdef, tx, schedule,
               accum_steps: int, use_dropout: bool, rules, mesh) -> tuple[state_lib.TrainState, dict]:
  """One optimizer update. A non-finite loss or gradient leaves params and moments untouched."""
  with axes.activation_rules(rules, mesh):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss, grads = _accumulated_grads(graphdef, state.params, batch, key, accum_steps, use_dropout)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = state_lib.TrainState(step=state.step + 1, params=keep(new_params, state.params),
                                     opt_state=keep(new_opt_state, state.opt_state), rng=state.rng)
    metrics = {"train_loss": loss, "grad_norm": grad_norm, "finite": finite,
               "learning_rate": schedule(state.step)}
    return new_state, metrics


def eval_step(params: Any, batches: Batch, *, graphdef, rules, mesh) -> jax.Array:
  """Mean loss (no dropout) over batches stacked on a leading axis, in one program.

  One program for the whole evaluation: many small programs holding collectives can
  interleave differently on XLA:CPU's simulated devices and deadlock its all-reduce.
  """
  def body(loss_sum, batch):
    return loss_sum + _loss(graphdef, params, batch, None), None

  with axes.activation_rules(rules, mesh):
    num_batches = jax.tree.leaves(batches)[0].shape[0]
    loss_sum, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), batches)
    return loss_sum / num_batches


def compile_steps(graphdef, tx, schedule, accum_steps: int, use_dropout: bool, rules,
                  state_shardings: state_lib.TrainState, batch_sharding):
  """Jitted (train_step, eval_step) with explicit shardings; the train state is donated."""
  batch_shardings = {"inputs": batch_sharding, "targets": batch_sharding}
  replicated = state_shardings.step
  mesh = replicated.mesh
  stacked_sharding = mesh_lib.stacked_batch_sharding(mesh)
  train = jax.jit(
      functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                        accum_steps=accum_steps, use_dropout=use_dropout, rules=rules,
                        mesh=mesh),
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, replicated), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, graphdef=graphdef, rules=rules, mesh=mesh),
                     in_shardings=(state_shardings.params,
                                   {"inputs": stacked_sharding, "targets": stacked_sharding}),
                     out_shardings=replicated)
  return train, evaluate
