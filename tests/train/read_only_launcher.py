"""Runs treadle-train as if the directory TREADLE_TEST_READ_ONLY were on a read-only mount.

The fallback of tests/train/test_workdir_cli.py's read-only test where a private mount
namespace is not permitted (a container without CAP_SYS_ADMIN, user namespaces disabled) and
chmod cannot stand in (root ignores it). Python's calls that write or change a path under the
directory fail with EROFS, as the kernel answers them on a read-only mount; the trainer's
first write there, the workdir lock, is such a call (os.open), so from that error on the
trainer runs the code it runs on a real read-only mount. C++ writers (TensorStore) are not
covered: the run fails before it reaches them.
"""
import builtins
import errno
import functools
import io
import os
import pathlib
import sys

READ_ONLY = pathlib.Path(os.environ["TREADLE_TEST_READ_ONLY"]).resolve()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _refuse_under(path) -> None:
  if isinstance(path, int):  # a file descriptor: opened (for reading) before
    return
  resolved = pathlib.Path(os.path.abspath(os.fsdecode(path)))
  if resolved == READ_ONLY or READ_ONLY in resolved.parents:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))


def _os_open(real, path, flags, *args, **kwargs):
  if flags & _WRITE_FLAGS:
    _refuse_under(path)
  return real(path, flags, *args, **kwargs)


def _io_open(real, file, mode="r", *args, **kwargs):
  if any(c in mode for c in "wax+"):
    _refuse_under(file)
  return real(file, mode, *args, **kwargs)


def _changes_path(real, *paths_and_more, **kwargs):
  for path in paths_and_more[:2]:
    if isinstance(path, (str, bytes, os.PathLike)):
      _refuse_under(path)
  return real(*paths_and_more, **kwargs)


os.open = functools.partial(_os_open, os.open)
builtins.open = io.open = functools.partial(_io_open, io.open)
for _name in ("mkdir", "makedirs", "rename", "replace", "remove", "unlink", "rmdir",
              "truncate", "symlink", "link", "chmod"):
  setattr(os, _name, functools.partial(_changes_path, getattr(os, _name)))

if __name__ == "__main__":
  from treadle.train import main
  sys.argv[0] = "treadle-train"
  main.run()
