"""The one-line error of every command: its own line, even when another thread is mid-line."""
import subprocess
import sys

import pytest

from tests.conftest import REPO

_FAIL_WHILE_A_THREAD_PRINTS = """
import sys, threading
from treadle.common import entry
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
  proc = _run("from treadle.common import entry; entry.fail('bad --step')")
  assert (proc.returncode, proc.stderr) == (2, "error: bad --step\n")


_ONE_LINE_ERRORS = """
import sys
from treadle.common import entry
kinds = {"default": (), "runtime": (RuntimeError,)}[sys.argv[1]]
with entry.one_line_errors(*kinds):
  raise {"value": ValueError, "runtime": RuntimeError}[sys.argv[2]]("bad --x\\nmore detail")
"""


def test_one_line_errors_turns_the_named_errors_into_the_error_line_and_lets_others_through():
  run = lambda kinds, raised: subprocess.run(
      [sys.executable, "-c", _ONE_LINE_ERRORS, kinds, raised], cwd=REPO, capture_output=True,
      text=True, timeout=60)
  for kinds, raised in (("default", "value"), ("runtime", "runtime")):
    proc = run(kinds, raised)
    assert (proc.returncode, proc.stderr) == (2, "error: bad --x\n"), (kinds, proc.stderr)
  proc = run("runtime", "value")  # not named: a traceback, exit 1
  assert proc.returncode == 1 and "Traceback" in proc.stderr and "ValueError" in proc.stderr


@pytest.mark.parametrize("module", ["treadle.train.main", "treadle.train.prepare"])
@pytest.mark.parametrize("overrides", [(), ("--config.train.num_steps=5",)])
def test_a_missing_config_file_is_one_line_naming_it_with_or_without_overrides(
    module, overrides, tmp_path):
  # ml_collections reads an override before the load error surfaces: that was a traceback
  workdir = ("--workdir", str(tmp_path / "run")) if module.endswith("main") else ()
  proc = subprocess.run([sys.executable, "-m", module, "--config", "configs/no_such.py",
                         *workdir, *overrides], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.splitlines() == [
      "error: --config 'configs/no_such.py': no such file (or it cannot be read)"], proc.stderr
  assert not (tmp_path / "run").exists()
