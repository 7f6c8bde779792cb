"""StopSignal: SIGTERM/SIGINT become a flag and a count; leaving restores the old handlers."""
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO, child_env
from treadle.train import interrupts

TINY = "configs/tiny.py"


def test_signals_are_recorded_counted_and_handlers_restored():
  before = signal.getsignal(signal.SIGTERM)
  with interrupts.StopSignal() as stop:
    assert stop.received is None and stop.count == 0
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.received == "SIGINT" and stop.count == 2
  assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_it_installs_nothing():
  before = signal.getsignal(signal.SIGTERM)
  made = []
  thread = threading.Thread(target=lambda: made.append(interrupts.StopSignal()))
  thread.start()
  thread.join()
  assert made and made[0].received is None
  assert signal.getsignal(signal.SIGTERM) is before


# A signal handled inside a weakref callback: Python reports the handler's SystemExit as
# "Exception ignored" and carries on, as it did during treadle-train's imports.
_LOST_EXIT = """
import os, signal, weakref
from treadle.train import interrupts
interrupts.install_exit_outside_training()
class Obj: pass
obj = Obj()
def callback(_):
  os.kill(os.getpid(), signal.SIGTERM)
  sum(range(1000))  # the handler runs between these bytecodes
ref = weakref.ref(obj, callback)
del obj
print("carried on", interrupts.received_outside_training(), interrupts.StopSignal().received)
"""


def test_a_signal_whose_exit_is_swallowed_is_remembered_for_the_loop():
  proc = subprocess.run([sys.executable, "-c", _LOST_EXIT], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  # remembered, so not reported as an "Exception ignored" traceback
  assert proc.stderr == ("SIGTERM during start-up or the final evaluation: nothing to save "
                         "(rerun to resume)\n")
  assert proc.stdout.split() == ["carried", "on", "SIGTERM", "SIGTERM"]


def test_outside_training_a_signal_exits_75():
  proc = subprocess.run([sys.executable, "-c", "import os, signal, time\n"
                         "from treadle.train import interrupts\n"
                         "interrupts.install_exit_outside_training()\n"
                         "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\nprint('not here')"],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == interrupts.EXIT_CODE and not proc.stdout, proc.stderr
  assert "SIGINT during start-up or the final evaluation: nothing to save" in proc.stderr


# treadle-train with a SIGTERM at a chosen moment before step 1 (timing a real signal is luck)
_TRAIN_SIGNALLED = """
import gc, os, runpy, signal, sys
from treadle.train import interrupts
interrupts.install_exit_outside_training()
def sigterm():
  os.kill(os.getpid(), signal.SIGTERM)
  sum(range(1000))  # the handler runs between these bytecodes
if sys.argv[1] == "gc":  # seen: handled inside jax's _xla_gc_callback, the exit swallowed
  def once(phase, info):
    gc.callbacks.remove(once)
    sigterm()
  gc.callbacks.append(once)
  gc.collect()
else:  # "restore": the run's files are written, the state is being built or restored
  from treadle.train import loop
  real = loop.init_or_restore
  loop.init_or_restore = lambda *a: (sigterm(), real(*a))[1]
sys.argv = ["treadle-train", *sys.argv[2:]]
runpy.run_module("treadle.train.main", run_name="__main__")
"""


@pytest.mark.parametrize("moment", ["gc", "restore"])
def test_a_sigterm_before_step_1_exits_75_quietly_and_the_summary_says_interrupted(
    tmp_path, text_file, moment):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-c", _TRAIN_SIGNALLED, moment, "--config", TINY,
                         "--workdir", workdir, f"--config.data.path={text_file}"], cwd=REPO,
                        env=child_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == interrupts.EXIT_CODE, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
  assert proc.stderr.count("SIGTERM during start-up") == 1, proc.stderr
  summary = json.loads((workdir / "summary.json").read_text())
  assert (summary["outcome"], summary["step"]) == ("interrupted", 0), summary
