"""Expert parallelism on 8 simulated CPU devices: the experts layer's two dispatch paths.

  python experiments/moe/bench_dispatch.py [--tokens 1024 --rounds 7 --iters 20]

Times forward + backward (gradients of x, fc and proj) of `treadle.model.moe.experts` under
jax.jit on a (data 1, fsdp 1, tensor 1, expert 8) mesh with the "dp" rules: tokens split
over the 8 devices, each device holding one expert's weights. dispatch="collectives" is the
model's shard_map (all-gather the tokens over the expert axis, each device runs its expert,
reduce-scatter the outputs); dispatch="xla" writes the global computation and lets XLA
partition its gathers and scatters from the shardings. Sizes are the MoE recipe's (8 experts,
top 2, D 128, F 256, GELU). The two paths run in alternating rounds; prints the median
ms per call of each, the median per-round ratio and the largest difference of their outputs.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")  # before jax

import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from treadle.model import axes  # noqa: E402
from treadle.model import moe  # noqa: E402
from treadle.train import mesh as mesh_lib  # noqa: E402

_TOKENS = flags.DEFINE_integer("tokens", 1024, "Tokens in the global batch (16 x 64).")
_EXPERTS = flags.DEFINE_integer("experts", 8, "Experts (a multiple of 8).")
_K = flags.DEFINE_integer("k", 2, "Experts per token.")
_EMBED = flags.DEFINE_integer("embed", 128, "Model width D.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Expert hidden width F.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds (one window of each path).")
_ITERS = flags.DEFINE_integer("iters", 20, "Calls per timed window.")


def inputs(mesh, rules):
  """x, routing (from the router's top-k) and the expert weights, placed as in training."""
  N, D, E, F = _TOKENS.value, _EMBED.value, _EXPERTS.value, _HIDDEN.value
  kx, kr, kf, kp = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(kx, (N, D), jnp.float32)
  logits = x @ (0.02 * jax.random.normal(kr, (D, E)))
  routing, _ = moe.route(logits, _K.value, False, 0.0)
  spec = lambda *names: jax.sharding.NamedSharding(mesh, axes.to_mesh_spec(names, rules))
  tokens = spec(axes.BATCH)
  x = jax.device_put(x, tokens)
  routing = moe.Routing(*(jax.device_put(v, tokens) for v in routing))
  fc = jax.device_put(0.02 * jax.random.normal(kf, (E, D, F)),
                      spec(axes.EXPERT, axes.EMBED, axes.MLP))
  proj = jax.device_put(0.02 * jax.random.normal(kp, (E, F, D)),
                        spec(axes.EXPERT, axes.MLP, axes.EMBED))
  return x, routing, fc, proj


def compiled(dispatch: str, mesh, rules):
  """jit(forward + backward) of the experts layer with this dispatch path."""
  def loss(x, routing, fc, proj):
    y = moe.experts(x, routing, fc, proj, "gelu", dispatch=dispatch)
    return jnp.sum(y * y), y

  def step(x, routing, fc, proj):
    with axes.activation_rules(rules, mesh):
      (_, y), grads = jax.value_and_grad(loss, argnums=(0, 2, 3), has_aux=True)(
          x, routing, fc, proj)
    return y, grads
  return jax.jit(step)


def window(fn, args, iters: int) -> float:
  start = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / iters


def main(argv) -> None:
  del argv
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from experiments.bench import machine
  if _EXPERTS.value % 8 or _TOKENS.value % 8:
    print("error: --experts and --tokens must be multiples of 8 (the expert axis)",
          file=sys.stderr)
    sys.exit(2)
  mesh, rules = mesh_lib.make_mesh((1, 1, 1, 8)), mesh_lib.rules("dp")
  args = inputs(mesh, rules)
  paths = {name: compiled(name, mesh, rules) for name in ("collectives", "xla")}
  outs = {name: jax.block_until_ready(fn(*args)) for name, fn in paths.items()}  # compile
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(outs["collectives"]), jax.tree.leaves(outs["xla"])))
  print(machine.describe())
  print(f"{jax.device_count()} devices, mesh {dict(mesh.shape)}, N {_TOKENS.value} tokens, "
        f"E {_EXPERTS.value}, k {_K.value}, D {_EMBED.value}, F {_HIDDEN.value}; "
        f"forward + backward, {_ITERS.value} calls per window")
  times = {name: [] for name in paths}
  for i in range(_ROUNDS.value):
    for name in (("collectives", "xla") if i % 2 == 0 else ("xla", "collectives")):
      times[name].append(window(paths[name], args, _ITERS.value))
    print(f"round {i}: collectives {times['collectives'][-1] * 1e3:.2f} ms  "
          f"xla {times['xla'][-1] * 1e3:.2f} ms")
  ratios = [x / c for c, x in zip(times["collectives"], times["xla"])]
  print(f"median: collectives {statistics.median(times['collectives']) * 1e3:.2f} ms  "
        f"xla {statistics.median(times['xla']) * 1e3:.2f} ms  xla/collectives "
        f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
        f"largest output/gradient difference {diff:.2e}")


if __name__ == "__main__":
  app.run(main)
