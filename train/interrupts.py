"""SIGTERM/SIGINT as a request to stop cleanly: shared by the trainer and the sweep runner."""
import signal


class StopSignal:
  """While active, SIGTERM and SIGINT set `received` (the signal's name) and count up
  instead of killing the process; the owner polls them and stops at a safe point.

  A context manager: leaving it restores the previous handlers. Outside the main thread
  (where Python cannot install handlers) it installs nothing and the caller handles signals.
  """

  def __init__(self):
    self.received: str | None = None
    self.count = 0
    self._previous = {}
    try:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    except ValueError:  # not the main thread
      pass

  def _handle(self, signum, frame) -> None:
    self.received = signal.Signals(signum).name
    self.count += 1

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __enter__(self) -> "StopSignal":
    return self

  def __exit__(self, *exc) -> None:
    self.restore()
