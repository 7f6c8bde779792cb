"""StopSignal: SIGTERM/SIGINT become a flag and a count; leaving restores the old handlers."""
import os
import signal
import threading

from treadle.train import interrupts


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
