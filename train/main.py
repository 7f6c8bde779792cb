"""treadle-train: train (or resume) the run described by a config file in a workdir.

  treadle-train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE ...]

Exit codes: 0 done, 2 bad input (config, data, mesh, incompatible workdir),
75 interrupted by SIGTERM/SIGINT after writing a checkpoint (rerun to resume).
"""
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from treadle.train import entry

# Nothing here imports jax at module level: the CPU device count must be chosen from the
# config before jax initialises its backends.

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() with auto-detection "
                               "(SLURM, TPU pods, ...); implied when SLURM_NTASKS > 1.")


def main(argv) -> None:
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    entry.fail("both --config and --workdir are required")
  from treadle.train import hosts  # noqa: E402  (after flags: sets device counts before jax starts)
  hosts.configure(_CONFIG.value.mesh.cpu_devices, _CONFIG.value.train.matmul_precision,
                  _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _MULTIHOST.value)
  from treadle.train import config as config_lib
  from treadle.train import logs
  from treadle.train import loop
  logs.setup()
  try:
    cfg = config_lib.split(_CONFIG.value)
    summary = loop.train(cfg, _WORKDIR.value)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    entry.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  logging.getLogger("treadle").info("finished: %s", summary)
  if summary["outcome"] == "interrupted":
    sys.exit(loop.INTERRUPTED_EXIT_CODE)


def run() -> None:
  """Console-script entry point."""
  entry.run(main)


if __name__ == "__main__":
  run()
