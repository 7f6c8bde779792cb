"""Runs treadle-train with Orbax's final rename of step SLOW_STEP held back for a minute.

Lets a test SIGKILL the process while that checkpoint is written but not committed,
without any test hook inside the library.
"""
import asyncio
import os
import sys

from orbax.checkpoint._src.path import atomicity

SLOW_STEP = os.environ["TREADLE_TEST_SLOW_STEP"]
_original = atomicity.AtomicRenameTemporaryPath.finalize


async def _slow_finalize(self, *args, **kwargs):
  if str(self.get_final()).rstrip("/").endswith(f"/{SLOW_STEP}"):
    open(os.environ["TREADLE_TEST_MARKER"], "w").close()  # "now writing": the test kills us
    await asyncio.sleep(60)
  return await _original(self, *args, **kwargs)


atomicity.AtomicRenameTemporaryPath.finalize = _slow_finalize

if __name__ == "__main__":
  from treadle.train import main
  sys.argv[0] = "treadle-train"
  main.run()
