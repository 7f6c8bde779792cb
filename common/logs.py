"""Console logging shared by the command-line entry points: ours at INFO, libraries quiet."""
import logging
import sys

from absl import logging as absl_logging


def setup() -> None:
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                      stream=sys.stderr, force=True)
  # orbax and grain log routine events as absl warnings; keep only errors
  for noisy in ("absl", "orbax", "jax", "grain"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
