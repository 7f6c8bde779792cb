"""The train state pytree and its sharded initialisation (never materialised on one device)."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train import mesh as mesh_lib


class TrainState(NamedTuple):
  step: jax.Array       # int32 scalar: updates applied so far
  params: Any           # pure dict of float32 arrays (Orbax keys = parameter names)
  opt_state: Any
  rng: jax.Array        # uint32[2] base key; per-step key = fold_in(rng, step)


def model_graph(model_cfg) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, abstract params, logical specs) without allocating any parameter."""
  abstract = nnx.eval_shape(lambda: model_cfg.make(nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  # logical axis names of every parameter, from the model's annotations
  specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
  return graphdef, nnx.to_pure_dict(abstract_state), specs


def init_params(model_cfg, seed: int) -> Any:
  return nnx.to_pure_dict(nnx.state(model_cfg.make(nnx.Rngs(seed))))


def shardings(model_cfg, tx: optax.GradientTransformation,
              mesh: jax.sharding.Mesh, rules) -> TrainState:
  """NamedShardings of every state leaf; raises a one-line error on indivisible dims."""
  _, abstract_params, specs = model_graph(model_cfg)
  params = mesh_lib.param_shardings(specs, mesh, rules)
  mesh_lib.check_divisible(abstract_params, params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # optimizer moments shaped like params take the params' shardings; counters replicate
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, params,
                              transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params, opt_state=opt, rng=replicated)


def abstract_state(model_cfg, tx, state_shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target for Orbax on any mesh."""
  def build():
    params = init_params(model_cfg, 0)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      jax.random.key_data(jax.random.key(0)))
  shapes = jax.eval_shape(build)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, state_shardings)


def create(model_cfg, tx: optax.GradientTransformation, seed: int,
           state_shardings: TrainState, params: Any = None) -> TrainState:
  """Builds the state directly in its shardings (jit with out_shardings).

  `params`, if given (fine-tuning), replaces the fresh initialisation; the optimizer is fresh.
  """
  def init(params):
    if params is None:
      params = init_params(model_cfg, seed)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      jax.random.key_data(jax.random.key(seed)))
  if params is None:
    return jax.jit(lambda: init(None), out_shardings=state_shardings)()
  return jax.jit(init, in_shardings=(state_shardings.params,),
                 out_shardings=state_shardings)(params)
