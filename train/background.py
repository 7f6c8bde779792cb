"""A failed disk as one error: what library threads and callbacks report on their own after it.

When the workdir's disk fails during an asynchronous checkpoint, the main thread learns of it
only when it next waits for Orbax; meanwhile Orbax's writer threads log it with tracebacks,
asyncio reports the futures nobody retrieved, TensorStore's callbacks find their event loop
closed, and at exit tensorboardX's writer cannot flush. `Quiet` keeps the first disk error for
treadle-train's one-line report and prints none of those; every other report passes as before.

Light (no jax): treadle-train installs it before training starts.
"""
import errno
import logging
import os
import re
import sys
import threading

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)

# TensorStore raises ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']") for an OSError
# of its C++ writes; the file it names last is the one that failed
_TS_ERRNO = re.compile(r"\[os_error_code='(\d+)'\]")
_TS_FILE = re.compile(r'(?:local file|Failed writing:) "([^"]+)"')


def disk_error(error: BaseException | None) -> OSError | None:
  """An OSError from writing the workdir anywhere in `error`'s chain (a checkpoint thread
  wraps it), TensorStore's status errors included."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
      return error
    if (found := _tensorstore_disk_error(error)) is not None:
      return found
    error = error.__cause__ or error.__context__
  return None


def _tensorstore_disk_error(error: BaseException) -> OSError | None:
  code = _TS_ERRNO.search(str(error)) if isinstance(error, ValueError) else None
  if code is None or int(code.group(1)) not in DISK_ERRNOS:
    return None
  files = _TS_FILE.findall(str(error))
  number = int(code.group(1))
  return OSError(number, os.strerror(number), files[-1] if files else None)


def describe(error: OSError, workdir: str) -> str:
  """The one line treadle-train ends with."""
  where = f" writing {error.filename!r}" if error.filename else f" in workdir {workdir!r}"
  reason = error.strerror or str(error).splitlines()[0]
  return f"{reason}{where}; checkpoints already written are intact"


def _late_loop_result(error: BaseException) -> bool:
  """A TensorStore write finishing after the asyncio loop that awaited it was closed: the
  loop's owner (an Orbax thread whose gather failed) has already reported why it stopped."""
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


class Quiet:
  """Installs hooks for the reports of threads (`threading.excepthook`), of callbacks and
  finalizers (`sys.unraisablehook`) and for error records with a traceback from loggers other
  than treadle's. A report is dropped when its error is a disk error (the first is kept in
  `first`), once a disk error has been seen (what follows is the process stopping because of
  it), or when it is TensorStore's late result for a closed event loop. Others pass on."""

  def __init__(self):
    self.first: OSError | None = None
    self.dropped = 0
    self._lock = threading.Lock()

  def disk_error(self, error: BaseException | None) -> OSError | None:
    """`error`'s disk error, or the first one a background report carried; remembered, so
    that whatever is reported afterwards counts as its consequence."""
    found = disk_error(error)
    with self._lock:
      if self.first is None:
        self.first = found
      return self.first

  def _drops(self, error: BaseException | None) -> bool:
    drop = self.disk_error(error) is not None or _late_loop_result(error)
    self.dropped += drop
    return drop

  def install(self) -> "Quiet":
    previous_thread_hook, previous_unraisable_hook = threading.excepthook, sys.unraisablehook

    def thread_hook(args):
      if not self._drops(args.exc_value):
        previous_thread_hook(args)

    def unraisable_hook(unraisable):
      if not self._drops(unraisable.exc_value):
        previous_unraisable_hook(unraisable)

    threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook
    for handler in logging.getLogger().handlers:  # logs.setup's: the one every logger reaches
      handler.addFilter(self._keep_record)
    return self

  def _keep_record(self, record: logging.LogRecord) -> bool:
    if record.name.startswith("treadle") or not record.exc_info or record.levelno < logging.ERROR:
      return True
    return not self._drops(record.exc_info[1])
