"""The train state pytree and its sharded initialisation (never materialised on one device)."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from treadle.model import lora
from treadle.train import mesh as mesh_lib


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


def random_params(model_cfg, seed: int) -> Any:
  """Fresh parameters on the default device, compiled as one program: run eagerly, every
  initialiser compiles on its own (~19 s for a 2-layer LoRA model on this CPU, vs ~4 s)."""
  return jax.jit(lambda: init_params(model_cfg, seed),
                 compiler_options=_init_compiler_options())()


def shardings(model_cfg, tx: optax.GradientTransformation,
              mesh: jax.sharding.Mesh, rules) -> TrainState:
  """NamedShardings of every state leaf; raises a one-line error on indivisible dims."""
  _, abstract_params, specs = model_graph(model_cfg)
  params = mesh_lib.param_shardings(specs, mesh, rules)
  mesh_lib.check_divisible(abstract_params, params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt = _opt_shardings(abstract_opt, abstract_params, params, replicated)
  return TrainState(step=replicated, params=params, opt_state=opt, rng=replicated)


def _opt_shardings(abstract_opt, abstract_params, param_shardings, replicated):
  """A state leaf whose key path ends with a param's path, at its shape, takes its sharding.

  Moments take the params' shardings, counters replicate. Matching paths rather than
  optax.tree_map_params also reaches moments inside partition/masked states (Muon + AdamW),
  whose label functions cannot run on tree_map_params' placeholder.
  """
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
  shapes, shards = flat(abstract_params), flat(param_shardings)

  def pick(path, leaf):
    for k in range(len(path)):
      suffix = tuple(path[k:])
      if suffix in shapes and shapes[suffix].shape == leaf.shape:
        return shards[suffix]
    return replicated
  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


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

  `params`, if given (fine-tuning), replaces the fresh base parameters; the optimizer is fresh.
  """
  def init(base):
    params = init_params(model_cfg, seed)
    if base is not None:  # LoRA adapters (if any) keep their fresh initialisation
      params = lora.with_adapters(base, params)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      jax.random.key_data(jax.random.key(seed)))
  options = _init_compiler_options()
  if params is None:
    return jax.jit(lambda: init(None), out_shardings=state_shardings,
                   compiler_options=options)()
  return jax.jit(init, in_shardings=(lora.base_params(state_shardings.params),),
                 out_shardings=state_shardings, compiler_options=options)(params)


def _init_compiler_options() -> dict:
  """LLVM -O2 for the one-off init program on CPU: its unrolled threefry code took LLVM's
  default -O3 ~10 s to compile (2-layer model; ~2.5 s at -O2, same values to 1 ulp, and the
  10M-parameter model still initialises in under half a second)."""
  return {"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else {}
