"""The one-line error of every command: its own line, even when another thread is mid-line."""
import subprocess
import sys

from tests.conftest import REPO

_FAIL_WHILE_A_THREAD_PRINTS = """
import sys, threading
from treadle.train import entry
release = threading.Event()
threading.Thread(target=release.wait, daemon=True).start()  # e.g. an Orbax writer thread
sys.stderr.write("  File 'a traceback line another thread has not ended'")
entry.fail("No space left on device writing 'run/checkpoints/20'")
"""


def _run(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=60)


def test_the_error_starts_its_own_line_when_other_threads_print():
  proc = _run(_FAIL_WHILE_A_THREAD_PRINTS)
  assert proc.returncode == 2, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: No space left on device writing 'run/checkpoints/20'"], proc.stderr


def test_a_command_without_threads_prints_only_the_error_line():
  proc = _run("from treadle.train import entry; entry.fail('bad --step')")
  assert (proc.returncode, proc.stderr) == (2, "error: bad --step\n")
