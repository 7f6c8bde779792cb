"""A run directory's one owner and its identity: the exclusive lock held for the whole run, and
fingerprints of the data and of the files inference reads (tokenizer.json, preprocess.json).

- `claim(W)` takes a non-blocking flock on W/lock (common/fileio.py's, shared with the sweep
  runner) and writes the owner's pid into it; a second trainer gets
  `workdir W is in use by pid N`. The kernel drops the lock with its process, SIGKILL included.
- W/fingerprints.json records sha256 digests of the training data (all splits as the model sees
  them) and of the artifact files; resume, `train.init_from` and the sampler compare them.
"""
import contextlib
import dataclasses
import hashlib
import json
import mmap
import os
import pathlib
from typing import Any, Iterator

import numpy as np

from treadle.common import fileio

LOCK_FILENAME = "lock"
FINGERPRINTS_FILENAME = "fingerprints.json"
# files a task saves for inference (data/tokenizers.py, data/images.py); checked when present
ARTIFACT_FILENAMES = ("tokenizer.json", "preprocess.json")


class WorkdirError(ValueError):
  """A run directory that cannot be used as asked: one line, exit 2."""


def check_usable(workdir: pathlib.Path) -> None:
  """Fails before anything is written when W is a file or lies under one."""
  for path in (workdir, *workdir.parents):
    if path.exists():
      if not path.is_dir():
        raise WorkdirError(f"workdir {str(workdir)!r}: {str(path)!r} is not a directory")
      return


def _lock_holder(path: pathlib.Path) -> str:
  try:
    pid = path.read_text().strip()
  except OSError:
    pid = ""
  return f"pid {pid}" if pid.isdigit() else "another process"


def _acquire(workdir: pathlib.Path) -> int:
  path = workdir / LOCK_FILENAME
  while True:
    fd = fileio.try_lock(path)
    if fd is None:
      raise WorkdirError(f"workdir {str(workdir)} is in use by {_lock_holder(path)}")
    # a starter that failed may have removed the file between our open and our flock
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      os.ftruncate(fd, 0)
      os.write(fd, f"{os.getpid()}\n".encode())
      return fd
    os.close(fd)


def _missing_dirs(workdir: pathlib.Path) -> list[pathlib.Path]:
  """The directories `mkdir -p W` would create, outermost first."""
  missing = [p for p in (workdir, *workdir.parents) if not p.exists()]
  return missing[::-1]


@contextlib.contextmanager
def claim(workdir: pathlib.Path, enabled: bool = True) -> Iterator[None]:
  """Holds W's lock for the block. If the block fails before writing anything into a W this
  call created, W is removed again: bad input leaves nothing behind."""
  if not enabled:  # processes other than 0 of a multi-process run: process 0 owns W
    yield
    return
  check_usable(workdir)
  created = _missing_dirs(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    fd = _acquire(workdir)
  except PermissionError as e:
    _remove_empty(created, workdir)
    raise WorkdirError(f"workdir {str(workdir)!r} is not writable ({e.strerror})") from None
  except OSError as e:
    _remove_empty(created, workdir)
    raise WorkdirError(f"workdir {str(workdir)!r}: {e.strerror or e}") from None
  except BaseException:
    _remove_empty(created, workdir)
    raise
  try:
    yield
  except BaseException:
    _remove_empty(created, workdir)
    raise
  finally:
    os.close(fd)


def _remove_empty(created: list[pathlib.Path], workdir: pathlib.Path) -> None:
  """Removes the directories this process created if they hold nothing but its lock file."""
  if not created:
    return
  lock = workdir / LOCK_FILENAME
  if lock.exists() and [p.name for p in workdir.iterdir()] == [LOCK_FILENAME]:
    lock.unlink()
  for path in reversed(created):
    try:
      path.rmdir()
    except OSError:
      return  # not empty: something was written, keep it


# -- fingerprints -------------------------------------------------------------------------

def _arrays(value: Any) -> Iterator[tuple[str, np.ndarray]]:
  """(field path, array) of every array inside dataclasses, dicts, tuples and lists: the in-memory
  splits and the memory-mapped token shards of a corpus on disk alike."""
  if isinstance(value, np.ndarray):
    yield "", value
  elif isinstance(value, (tuple, list)):
    for i, item in enumerate(value):
      yield from ((f"{i}.{name}", a) for name, a in _arrays(item))
  elif isinstance(value, dict):  # post-training splits: {field: array}
    for key in sorted(value):
      yield from ((f"{key}.{name}", a) for name, a in _arrays(value[key]))
  elif dataclasses.is_dataclass(value):
    for field in dataclasses.fields(value):
      yield from ((f"{field.name}.{name}", a) for name, a in _arrays(getattr(value, field.name)))


_CHUNK = 1 << 22  # elements hashed at a time: in-memory splits are never copied whole


def data_fingerprint(splits) -> str:
  """sha256 over the train, val and test arrays exactly as training reads them."""
  digest = hashlib.sha256()
  for name in ("train", "val", "test"):
    for path, array in _arrays(getattr(splits, name)):
      digest.update(f"{name}.{path}:{array.dtype.str}:{array.shape};".encode())
      flat = array.reshape(-1)
      if (region := _mapped_region(flat)) is not None:
        _hash_file_region(digest, *region, flat.nbytes)
        continue
      for start in range(0, flat.size, _CHUNK):
        digest.update(np.ascontiguousarray(flat[start:start + _CHUNK]).tobytes())
  return digest.hexdigest()


def _mapped_region(array: np.ndarray) -> tuple[str, int] | None:
  """(file, byte offset) of a C-contiguous array that views a memory-mapped token shard.

  Such arrays are hashed by reading the file, not through the mapping: every mapped page
  touched would stay in the process's RSS (a 1 GB corpus's char shards: 2 GiB)."""
  base = array
  while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
    base = base.base
  if base is None or not array.flags.c_contiguous or not array.nbytes:
    return None
  mapping_start = np.frombuffer(base._mmap, np.uint8).ctypes.data  # no page is read
  mapped_from = base.offset - base.offset % mmap.ALLOCATIONGRANULARITY  # np.memmap aligns
  return base.filename, mapped_from + array.ctypes.data - mapping_start


def _hash_file_region(digest, path: str, offset: int, size: int) -> None:
  buffer = bytearray(4 << 20)
  with open(path, "rb") as f:
    f.seek(offset)
    while size > 0:
      n = f.readinto(memoryview(buffer)[:min(size, len(buffer))])
      if not n:
        raise ValueError(f"{path!r} is shorter than its token cache manifest says")
      digest.update(memoryview(buffer)[:n])
      size -= n


def _file_digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def current(workdir: pathlib.Path, splits) -> dict[str, str]:
  """The fingerprints of this run as written in W: its data and its artifact files."""
  found = {"data": data_fingerprint(splits)}
  found.update({name: _file_digest(workdir / name) for name in ARTIFACT_FILENAMES
                if (workdir / name).exists()})
  return found


def recorded(workdir: pathlib.Path) -> dict[str, str] | None:
  path = workdir / FINGERPRINTS_FILENAME
  if not path.exists():
    return None  # written by a version without fingerprints: recorded from now on
  try:
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict):
      raise ValueError("not a JSON object")
  except ValueError as e:
    raise WorkdirError(f"{str(path)!r} is damaged ({e})") from None
  return saved


def record(workdir: pathlib.Path, splits) -> None:
  fileio.atomic_write(workdir / FINGERPRINTS_FILENAME,
                      json.dumps(current(workdir, splits), indent=1) + "\n")


def check_artifacts(workdir: pathlib.Path, role: str = "workdir") -> None:
  """tokenizer.json / preprocess.json unchanged since the run wrote them."""
  saved = recorded(workdir) or {}
  for name in ARTIFACT_FILENAMES:
    path = workdir / name
    if name in saved and path.exists() and _file_digest(path) != saved[name]:
      raise WorkdirError(f"{role}: {str(path)!r} was changed after the run wrote it (its "
                         f"sha256 differs from the one in {FINGERPRINTS_FILENAME})")


def check_data(workdir: pathlib.Path, splits, source: str) -> None:
  """Resume: the data read now must be the data the run started with."""
  saved = recorded(workdir) or {}
  if "data" in saved and data_fingerprint(splits) != saved["data"]:
    raise WorkdirError(f"workdir {str(workdir)!r}: the data ({source}) differ from those the run "
                       f"started with (sha256 in {FINGERPRINTS_FILENAME}); use a new workdir")


def check_vocab(workdir: pathlib.Path, tokenizer, model_vocab_size: int) -> None:
  """A tokenizer that would index past the model's embedding (or leave ids unused)."""
  if tokenizer.vocab_size != model_vocab_size:
    raise WorkdirError(f"{str(workdir / 'tokenizer.json')!r} has {tokenizer.vocab_size} tokens "
                       f"but the model was trained with model.vocab_size={model_vocab_size}")
