"""Logical axis names for parameters and activations, and the activation constraint hook.

Model code names only these axes; train/mesh.py maps them onto mesh axes.
"""
import contextlib
import threading
from typing import Iterator, Mapping, Sequence

import jax
from flax import nnx

BATCH = "batch"
SEQ = "seq"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"  # grouped-query attention: key/value heads
HEAD_DIM = "head_dim"
MLP = "mlp"
VOCAB = "vocab"
LAYERS = "layers"
EXPERT = "expert"  # mixture-of-experts: the experts of a layer

Rules = Mapping[str, str | tuple[str, ...] | None]


class _Active(threading.local):
  rules: Rules | None = None
  mesh: jax.sharding.Mesh | None = None


_active = _Active()


@contextlib.contextmanager
def activation_rules(rules: Rules | None, mesh: jax.sharding.Mesh | None) -> Iterator[None]:
  """Within this context (entered inside a traced step), `constrain` shards activations."""
  previous = (_active.rules, _active.mesh)
  _active.rules, _active.mesh = rules, mesh
  try:
    yield
  finally:
    _active.rules, _active.mesh = previous


def active() -> tuple[jax.sharding.Mesh | None, Rules | None]:
  """(mesh, rules) of the enclosing activation_rules context, or (None, None)."""
  if _active.rules is None or _active.mesh is None:
    return None, None
  return _active.mesh, _active.rules


def to_mesh_spec(names: Sequence[str | None], rules: Rules) -> jax.sharding.PartitionSpec:
  """Logical names -> PartitionSpec; a mesh axis used by an earlier dim is dropped."""
  used: set[str] = set()
  spec = []
  for name in names:
    target = rules.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return jax.sharding.PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation; a no-op when no rules are active."""
  if _active.rules is None or _active.mesh is None:
    return x
  spec = to_mesh_spec(names, _active.rules)
  return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(_active.mesh, spec))


def param(
    init: nnx.Initializer, key: jax.Array, shape: Sequence[int], names: Sequence[str | None]
) -> nnx.Param:
  """A float32 parameter annotated with logical axes (sharding is applied by train/, not here)."""
  assert len(shape) == len(names), (shape, names)
  return nnx.Param(init(key, tuple(shape), jax.numpy.float32), out_sharding=tuple(names),
                   eager_sharding=False)
