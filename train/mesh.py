"""Device meshes over (data, fsdp, tensor, expert) and the presets mapping logical axes onto
them."""
import math
from typing import Any

import jax
import numpy as np

from treadle.model import axes

AXES = ("data", "fsdp", "tensor", "expert")
# Every preset splits the batch over data, fsdp and expert (outside MoE blocks the expert
# axis is more data parallelism) and MoE experts over expert.
_BATCH = ("data", "fsdp", "expert")

RULES: dict[str, axes.Rules] = {
    # pure data parallel: parameters replicated (but experts)
    "dp": {axes.BATCH: _BATCH, axes.EXPERT: "expert"},
    # ZeRO-3 style: parameters split along the embedding dim over fsdp
    "fsdp": {axes.BATCH: _BATCH, axes.EMBED: "fsdp", axes.EXPERT: "expert"},
    # fsdp plus Megatron-style tensor parallelism over heads, mlp and vocab
    "fsdp_tp": {axes.BATCH: _BATCH, axes.EMBED: "fsdp", axes.HEADS: "tensor",
                axes.KV_HEADS: "tensor", axes.MLP: "tensor", axes.VOCAB: "tensor",
                axes.EXPERT: "expert"},
}


def rules(name: str) -> axes.Rules:
  if name not in RULES:
    raise ValueError(f"mesh.rules={name!r} is not one of {sorted(RULES)}")
  return RULES[name]


def resolve_shape(shape: tuple[int, ...], num_devices: int) -> tuple[int, ...]:
  """Replaces one -1 with the remaining devices; the product must equal the device count.
  A shape of three (data, fsdp, tensor) has expert 1."""
  shape = tuple(shape) + (1,) * (len(AXES) - len(shape))
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {dict(zip(AXES, shape))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {dict(zip(AXES, shape))}: sizes must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if num_devices % known:
    raise ValueError(f"mesh shape {dict(zip(AXES, shape))} does not divide {num_devices} devices")
  full = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(full) != num_devices:
    raise ValueError(f"mesh shape {dict(zip(AXES, full))} uses {math.prod(full)} devices, "
                     f"but {num_devices} are present")
  return full


def make_mesh(shape: tuple[int, ...], devices=None) -> jax.sharding.Mesh:
  """(data, fsdp, tensor[, expert]) sizes, one of them -1 at most."""
  devices = jax.devices() if devices is None else list(devices)
  full = resolve_shape(tuple(shape), len(devices))
  return jax.make_mesh(full, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                       devices=devices)


def param_shardings(logical: Any, mesh: jax.sharding.Mesh, rule_set: axes.Rules) -> Any:
  return jax.tree.map(
      lambda spec: jax.sharding.NamedSharding(mesh, axes.to_mesh_spec(tuple(spec), rule_set)),
      logical, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def check_divisible(abstract: Any, shardings: Any) -> None:
  """Every sharded dimension must divide evenly: a one-line error naming the parameter."""
  def check(path, leaf, sharding):
    for dim, (size, spec) in enumerate(zip(leaf.shape, sharding.spec)):
      names = (spec,) if isinstance(spec, str) else tuple(spec or ())
      parts = math.prod(sharding.mesh.shape[n] for n in names)
      if size % parts:
        raise ValueError(f"parameter {jax.tree_util.keystr(path, simple=True, separator='/')} "
                         f"dim {dim} (size {size}) is not divisible by mesh axes {names} "
                         f"(size {parts})")
  jax.tree_util.tree_map_with_path(check, abstract, shardings)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Splits dim 0 (the batch) of an array of any rank over data x fsdp x expert."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(_BATCH))


def stacked_batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Batches stacked on a leading axis (evaluation sets): the batch is dim 1."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, _BATCH))


def batch_parallelism(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[a] for a in _BATCH)


def sharding_table(params: Any) -> list[dict]:
  """Name, shape, spec and bytes per device of every parameter."""
  rows = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    shard_shape = leaf.sharding.shard_shape(leaf.shape)
    rows.append({"name": jax.tree_util.keystr(path, simple=True, separator="/"),
                 "shape": list(leaf.shape), "spec": str(leaf.sharding.spec),
                 "bytes_per_device": int(np.prod(shard_shape)) * leaf.dtype.itemsize})
  return rows


def format_table(rows: list[dict]) -> str:
  width = max(len(r["name"]) for r in rows)
  lines = [f"{'parameter':<{width}}  {'shape':<18} {'spec':<40} bytes/device"]
  lines += [f"{r['name']:<{width}}  {str(tuple(r['shape'])):<18} {r['spec']:<40} "
            f"{r['bytes_per_device']:,}" for r in rows]
  total = sum(r["bytes_per_device"] for r in rows)
  lines.append(f"{'total':<{width}}  {'':<18} {'':<40} {total:,}")
  return "\n".join(lines)
