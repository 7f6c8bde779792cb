"""MoE / dense training-step time, measured side by side in one process.

  python experiments/moe/step_ratio.py --data_path=../shared/data/tinyshakespeare/input.txt \
      [--a configs/shakespeare_char_cpu.py --b configs/moe_char_cpu.py --rounds 7 --steps 20]
      [--set key=value ...] [--a_set key=value ...] [--b_set key=value ...]

Both configs' train steps are compiled first; then each round times a window of `steps`
steps of A, then of B (alternating which goes first), so load from other users of the shared
cores falls on both alike. Prints each round's ms/step and the median of the per-round
ratios B / A (compilation excluded).
"""
import ast
import importlib.util
import pathlib
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
_A = flags.DEFINE_string("a", "configs/shakespeare_char_cpu.py", "Baseline config file.")
_B = flags.DEFINE_string("b", "configs/moe_char_cpu.py", "Compared config file.")
_DATA = flags.DEFINE_string("data_path", None, "Text file both configs train on.", required=True)
_SET = flags.DEFINE_multi_string("set", [], "key=value for both configs (e.g. "
                                  "mesh.cpu_devices=8).")
_A_SET = flags.DEFINE_multi_string("a_set", [], "key=value for A only (e.g. mesh.data=8).")
_B_SET = flags.DEFINE_multi_string("b_set", [], "key=value for B only.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds (one window of each config).")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed window.")


def load_config(path: str, overrides: list[str]):
  """The config file's config with data.path and each key=value (parsed as a Python literal
  where it is one) set."""
  spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.data.path = _DATA.value
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      print(f"error: {item!r} is not key=value", file=sys.stderr)
      sys.exit(2)
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
      node = node[name]
    node[leaf] = value
  return cfg


class Stepper:
  """One config's compiled step, state and data, stepped in timed windows."""

  def __init__(self, cfg):
    from treadle.train import config as config_lib
    from treadle.train import loop
    from treadle.train import state as state_lib
    self.run = loop.prepare(config_lib.split(cfg), tempfile.mkdtemp())
    self.data = self.run.task.train_iterator(self.run.splits.train, self.run.cfg, 0, 1)
    self.state = state_lib.create(self.run.cfg.model, self.run.tx, self.run.cfg.train.seed,
                                  self.run.state_shardings)
    self.window(3)  # compile and warm caches

  def window(self, steps: int) -> float:
    """Seconds per step over `steps` steps, ending when the device has finished them."""
    import jax
    from treadle.train import loop
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.run.train_step(
          self.state, loop._global_batch(self.run, next(self.data)))
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def main(argv) -> None:
  del argv
  sys.path.insert(0, str(ROOT))
  from experiments.bench import machine
  from treadle.common import hosts
  cfg_a = load_config(_A.value, _SET.value + _A_SET.value)
  cfg_b = load_config(_B.value, _SET.value + _B_SET.value)
  if cfg_a.mesh.cpu_devices != cfg_b.mesh.cpu_devices:
    print("error: the two configs ask for different mesh.cpu_devices", file=sys.stderr)
    sys.exit(2)
  hosts.configure(cfg_a.mesh.cpu_devices, cfg_a.train.matmul_precision)
  a, b = Stepper(cfg_a), Stepper(cfg_b)
  print(machine.describe())
  print(f"A = {_A.value} {' '.join(_SET.value + _A_SET.value)}, "
        f"B = {_B.value} {' '.join(_SET.value + _B_SET.value)}, {_STEPS.value} steps per window")
  ratios, times_a, times_b = [], [], []
  for i in range(_ROUNDS.value):
    first, second = (a, b) if i % 2 == 0 else (b, a)
    t_first, t_second = first.window(_STEPS.value), second.window(_STEPS.value)
    t_a, t_b = (t_first, t_second) if i % 2 == 0 else (t_second, t_first)
    times_a.append(t_a), times_b.append(t_b), ratios.append(t_b / t_a)
    print(f"round {i}: A {t_a * 1e3:.1f} ms/step  B {t_b * 1e3:.1f} ms/step  B/A {t_b / t_a:.2f}")
  print(f"median: A {statistics.median(times_a) * 1e3:.1f} ms/step  "
        f"B {statistics.median(times_b) * 1e3:.1f} ms/step  "
        f"B/A {statistics.median(ratios):.2f} (median of per-round ratios; "
        f"min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
  app.run(main)
