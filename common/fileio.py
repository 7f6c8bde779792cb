"""Files a killed process never leaves half-written, and locks that die with their process.

Shared by the trainer, the data and tokenizer caches and the sweep runner."""
import fcntl
import os
import pathlib
import tempfile


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same directory and a rename:
  readers see the old content or the new, never a mix (also after SIGKILL or a full disk)."""
  path = pathlib.Path(path)
  mode = "wb" if isinstance(data, bytes) else "w"
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def try_lock(path: str | os.PathLike) -> int | None:
  """A non-blocking exclusive flock on `path`: its fd, or None when another process holds it.

  The kernel releases the lock when the holding process exits, SIGKILL included."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  return fd
