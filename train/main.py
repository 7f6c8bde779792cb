"""treadle-train: train (or resume) the run described by a config file in a workdir.

  treadle-train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE ...]

Exit codes: 0 done, 2 bad input (config, data, mesh, incompatible or busy workdir, a
workdir that can't be written, a full disk), 75 interrupted by SIGTERM/SIGINT (after writing
a checkpoint once training has started; rerun to resume).
"""
from treadle.train import interrupts

# First thing: a signal during imports, restore or compilation exits 75 as one during training
# does (not 143); the training loop's handler takes over while steps run.
interrupts.install_exit_outside_training()

import logging  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from treadle.common import entry  # noqa: E402

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
  config = entry.config_file(_CONFIG, ("mesh", "train"))
  from treadle.train import workdir as workdir_lib  # light: no jax
  try:
    workdir_lib.check_usable(pathlib.Path(_WORKDIR.value))  # early: before jax starts (seconds)
  except ValueError as e:
    entry.fail(str(e))
  from treadle.common import hosts  # noqa: E402  (after flags: sets device counts before jax starts)
  hosts.configure(config.mesh.cpu_devices, config.train.matmul_precision,
                  _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _MULTIHOST.value)
  from treadle.train import config as config_lib
  from treadle.common import logs
  from treadle.train import background
  from treadle.train import loop
  from treadle.train import reporting
  logs.setup()
  quiet = background.Quiet().install()  # a failed disk: one line, not Orbax's thread tracebacks
  try:
    cfg = config_lib.split(config)
    summary = loop.train(cfg, _WORKDIR.value)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    if (disk := quiet.disk_error(e)) is not None:
      entry.fail(background.describe(disk, _WORKDIR.value))
    entry.fail_with(e, getattr(e, "exit_code", 2))  # 1: failed mid-run (GRPO's reward)
  except Exception as e:  # a full or read-only disk, as whichever type the writer raised
    if (disk := quiet.disk_error(e)) is None:
      raise
    entry.fail(background.describe(disk, _WORKDIR.value))
  if (disk := quiet.disk_error(None)) is not None:  # only a thread saw it: not all was saved
    entry.fail(background.describe(disk, _WORKDIR.value))
  logging.getLogger("treadle").info("finished: %s", reporting.shown(summary))
  if summary["outcome"] == "interrupted" or interrupts.received_outside_training():
    sys.exit(interrupts.EXIT_CODE)


def run() -> None:
  """Console-script entry point."""
  entry.run(main)


if __name__ == "__main__":
  run()
