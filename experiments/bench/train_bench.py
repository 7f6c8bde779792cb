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
_PEAK = flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s for MFU; 0 = the table in train/perf.py.")
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
  peak = _PEAK.value or perf.peak_flops(
      "cpu" if device.platform == "cpu" else device.device_kind, cfg.model.compute_dtype)
  if peak and device.platform != "cpu":
    peak *= jax.device_count()
  pipeline = _pipeline_rate(run, data_iter, 200)
  return {
      "machine": machine.describe(),
      "devices": f"{jax.device_count()} x {device.platform}", "mesh": dict(run.mesh.shape),
      "compute_dtype": cfg.model.compute_dtype, "step_ms": step_s * 1e3,
      "step_ms_windows": [w * 1e3 for w in windows], "tokens_per_second": tokens / step_s,
      "time_to_first_step_s": first_step, "flops_per_token": flops_token,
      "achieved_flops": tokens / step_s * flops_token, "peak_flops": peak,
      "mfu": (tokens / step_s * flops_token / peak) if peak else None,
      "pipeline_batches_per_second": pipeline, "consumed_batches_per_second": 1 / step_s,
      "pipeline_headroom": pipeline * step_s,
      "step_ms_with_async_saves": statistics.median(with_saves) * 1e3,
      "checkpoint_overhead": statistics.median(with_saves) / step_s - 1,
  }


def main(argv) -> None:
  del argv
  from treadle.train import config as config_lib
  from treadle.train import hosts
  from treadle.train import logs
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
