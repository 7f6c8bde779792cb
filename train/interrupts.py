"""SIGTERM/SIGINT as a request to stop cleanly: shared by the trainer and the sweep runner.

Light (no jax): treadle-train installs `exit_outside_training` before its first import.
"""
import signal
import sys

EXIT_CODE = 75  # EX_TEMPFAIL: whatever was trained is checkpointed; rerun the command to resume

# A signal outside the training loop (imports, restore, compilation, the final evaluation)
# exits by raising SystemExit wherever the main thread is. A few places swallow it: during an
# import, a weakref callback of importlib's module locks reports "Exception ignored" and the
# import carries on. The signal is remembered here so the trainer still stops at its next safe
# point: the loop's StopSignal starts from it, and treadle-train exits EXIT_CODE at the end.
_outside_training: str | None = None
_previous_unraisablehook = sys.__unraisablehook__


def exit_outside_training(signum, frame) -> None:
  """Signal handler for the phases with nothing unsaved: exit EXIT_CODE at once."""
  del frame
  global _outside_training
  first, _outside_training = _outside_training is None, signal.Signals(signum).name
  if first:
    print(f"{_outside_training} during start-up or the final evaluation: nothing to save "
          "(rerun to resume)", file=sys.stderr)
  sys.exit(EXIT_CODE)


def install_exit_outside_training() -> None:
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, exit_outside_training)
  global _previous_unraisablehook
  if sys.unraisablehook is not _quiet_lost_exit:
    _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _quiet_lost_exit


def _quiet_lost_exit(unraisable) -> None:
  """Python reports an exception it cannot raise (one in a gc or weakref callback, such as
  jax's _xla_gc_callback) as "Exception ignored" with a traceback. The handler's exit is
  remembered and acted on later, so that report would only alarm: drop it, pass others on."""
  exit_code = getattr(unraisable.exc_value, "code", None)
  if not (isinstance(unraisable.exc_value, SystemExit) and exit_code == EXIT_CODE
          and _outside_training is not None):
    _previous_unraisablehook(unraisable)


def received_outside_training() -> str | None:
  """The signal `exit_outside_training` handled, if one came (its SystemExit may be lost)."""
  return _outside_training


class StopSignal:
  """While active, SIGTERM and SIGINT set `received` (the signal's name) and count up
  instead of killing the process; the owner polls them and stops at a safe point.

  A context manager: leaving it restores the previous handlers. Outside the main thread
  (where Python cannot install handlers) it installs nothing and the caller handles signals.
  """

  def __init__(self):
    # a signal whose exit was swallowed before the loop began still stops it
    self.received: str | None = _outside_training
    self.count = int(_outside_training is not None)
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
