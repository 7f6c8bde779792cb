"""Training benchmark: throughput, time to first step, MFU, input headroom, checkpoint cost.

  python experiments/bench/train_bench.py --config configs/shakespeare_char_cpu.py \
      --config.data.path=../shared/data/tinyshakespeare/input.txt [--windows 5 --steps 20]

Prints a table (or --json). Every figure is measured in this one process: medians of
several windows, compilation excluded except in "time to first step".
"""
import time

_START = time.perf_counter()  # before jax is imported: "command start" for time-to-first-step

import json  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # run by path: repo root
from experiments.bench import machine  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows (the median is reported).")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed window.")
_PEAK = flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s for MFU; 0 = measured on a CPU "
                           "(matmul_peak), the table in train/perf.py on an accelerator.")
_SAVE_EVERY = flags.DEFINE_integer("save_every", 10, "Steps between saves when timing checkpoints.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")


def _time_steps(run, state, data_iter, steps: int, on_step=None):
  """Seconds for `steps` train steps, ending when the device has finished them."""
  import jax
  from treadle.train import loop
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = run.train_step(state, loop._global_batch(run, next(data_iter)))
    if on_step:
      on_step(state, i + 1)
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - start


def _pipeline_rate(run, data_iter, batches: int) -> float:
  """Batches per second the input pipeline alone delivers (host batch to device array)."""
  import jax
  from treadle.train import loop
  start = time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(loop._global_batch(run, next(data_iter)))
  return batches / (time.perf_counter() - start)


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of one large square matmul per device, all devices at once (best of `repeats`):
  the peak a CPU's MFU is measured against here, in the run's compute dtype (the table's CPU
  entries are another machine's)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  n = jax.device_count()
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  make = jax.jit(lambda k: jax.random.normal(k, (n, size, size), jnp.dtype(dtype)),
                 out_shardings=spec)
  a, b = make(jax.random.key(0)), make(jax.random.key(1))
  matmul = jax.jit(lambda a, b: jnp.einsum("nij,njk->nik", a, b), out_shardings=spec)
  jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return 2 * n * size**3 / best


def measure(cfg) -> dict:
  import jax
  from treadle.train import checkpoint
  from treadle.train import loop
  from treadle.train import perf
  from treadle.train import state as state_lib

  run = loop.prepare(cfg, tempfile.mkdtemp())
  cfg = run.cfg  # resolved: vocabulary size and context filled in
  data_iter = run.task.train_iterator(run.splits.train, cfg, 0, 1)
  state = state_lib.create(cfg.model, run.tx, cfg.train.seed, run.state_shardings)
  state, _ = _time_steps(run, state, data_iter, 1)
  first_step = time.perf_counter() - _START
  state, _ = _time_steps(run, state, data_iter, 3)  # warm caches
  windows = []
  for _ in range(_WINDOWS.value):
    state, seconds = _time_steps(run, state, data_iter, _STEPS.value)
    windows.append(seconds / _STEPS.value)
  step_s = statistics.median(windows)

  mgr = checkpoint.manager(tempfile.mkdtemp(), keep=2, keep_best=False)
  with_saves = []
  for window in range(_WINDOWS.value):
    def save(s, i, window=window):  # step numbers known on the host: no device sync
      if i % _SAVE_EVERY.value == 0:
        checkpoint.save(mgr, window * _STEPS.value + i, s, data_iter, cfg.to_dict())
    state, seconds = _time_steps(run, state, data_iter, _STEPS.value, save)
    with_saves.append(seconds / _STEPS.value)
  mgr.wait_until_finished()
  mgr.close()

  tokens = cfg.train.batch_size * run.task.units_per_example(cfg)
  flops_token = run.task.flops_per_unit(cfg)
  device = jax.devices()[0]
  if _PEAK.value:
    peak, source = _PEAK.value, "--peak_flops"
  elif device.platform == "cpu":
    peak, source = matmul_peak(cfg.model.compute_dtype), "measured (matmul_peak)"
  else:
    peak, source = perf.peak_flops(device.device_kind, cfg.model.compute_dtype), "table"
    peak = peak * jax.device_count() if peak else None
  pipeline = _pipeline_rate(run, data_iter, 200)
  return {
      "machine": machine.describe(),
      "devices": f"{jax.device_count()} x {device.platform}", "mesh": dict(run.mesh.shape),
      "compute_dtype": cfg.model.compute_dtype, "step_ms": step_s * 1e3,
      "step_ms_windows": [w * 1e3 for w in windows], "tokens_per_second": tokens / step_s,
      "time_to_first_step_s": first_step, "flops_per_token": flops_token,
      "achieved_flops": tokens / step_s * flops_token, "peak_flops": peak,
      "peak_flops_source": source,
      "mfu": (tokens / step_s * flops_token / peak) if peak else None,
      "pipeline_batches_per_second": pipeline, "consumed_batches_per_second": 1 / step_s,
      "pipeline_headroom": pipeline * step_s,
      "step_ms_with_async_saves": statistics.median(with_saves) * 1e3,
      "checkpoint_overhead": statistics.median(with_saves) / step_s - 1,
  }


def main(argv) -> None:
  del argv
  from treadle.train import config as config_lib
  from treadle.common import hosts
  from treadle.common import logs
  hosts.configure(_CONFIG.value.mesh.cpu_devices, _CONFIG.value.train.matmul_precision)
  logs.setup()
  result = measure(config_lib.split(_CONFIG.value))
  if _JSON.value:
    print(json.dumps(result))
    return
  for key, value in result.items():
    shown = f"{value:,.4g}" if isinstance(value, float) else value
    print(f"{key:<30} {shown}")


if __name__ == "__main__":
  sys.argv[0] = "train_bench"
  app.run(main)
