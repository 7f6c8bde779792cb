"""safetensors files of a Hugging Face model directory: read tensor by tensor (no torch, no
whole-model copy), and write a model as one file or as shards with an index."""
import json
import pathlib
from typing import Callable, NamedTuple

import numpy as np
import safetensors
from safetensors import numpy as st_numpy

from treadle.hf import config_fields
from treadle.hf import dir_files
from treadle.hf.config_fields import HfFormatError  # noqa: F401 (imported from here by callers)

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class TensorInfo(NamedTuple):
  file: pathlib.Path
  shape: tuple[int, ...]
  dtype: str  # safetensors' name: F32, BF16, F16, ...


_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _open(path: pathlib.Path):
  try:
    return safetensors.safe_open(str(path), framework="numpy")
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise HfFormatError(f"{str(path)!r} is not a readable safetensors file ({reason})") from None


def _weight_map(hf_dir: pathlib.Path) -> dict[str, str]:
  """The index's tensor name -> shard file name."""
  index = dir_files.read_object(dir_files.path(hf_dir, INDEX, INDEX))
  weight_map = index.get("weight_map")
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
    raise HfFormatError(f"{INDEX}: weight_map must be a JSON object of tensor name -> file "
                        f"name, got {config_fields.shown(weight_map)}")
  return weight_map


def _files(hf_dir: pathlib.Path) -> list[pathlib.Path]:
  """The safetensors files to read, each checked to lie inside `hf_dir`."""
  if (hf_dir / INDEX).exists():
    names = sorted(set(_weight_map(hf_dir).values()))
    files = [dir_files.path(hf_dir, name, f"{INDEX}'s weight_map") for name in names]
    missing = [name for name, f in zip(names, files) if not f.exists()]
    if missing:
      raise HfFormatError(f"{INDEX} names missing shard {missing[0]!r} in {str(hf_dir)!r}")
    return files
  if (hf_dir / SINGLE).exists():
    return [dir_files.path(hf_dir, SINGLE, SINGLE)]
  raise HfFormatError(f"no {SINGLE} or {INDEX} in {str(hf_dir)!r}")


def scan(hf_dir: pathlib.Path) -> dict[str, TensorInfo]:
  """Every tensor's file, shape and dtype, from the headers only (safetensors checks that
  each file is as long as its header says, so a truncated file fails here)."""
  tensors = {}
  for path in _files(hf_dir):
    with _open(path) as f:
      for name in f.keys():
        piece = f.get_slice(name)
        tensors[name] = TensorInfo(path, tuple(piece.get_shape()), piece.get_dtype())
  return tensors


def read(info: TensorInfo, name: str) -> np.ndarray:
  """One tensor as float32. The file is opened for this tensor only: its memory map (whose
  touched pages count as resident) is released before the next tensor is read."""
  if info.dtype not in _FLOAT_DTYPES:
    raise HfFormatError(f"tensor {name!r} has dtype {info.dtype}; expected a float type")
  with _open(info.file) as f:
    array = f.get_tensor(name)
  return array if array.dtype == np.float32 else array.astype(np.float32)


class Entry(NamedTuple):
  """One tensor to write: its HF name and shape, and a function that produces it (called
  when its shard is written, so only one shard's tensors are in memory at a time)."""
  name: str
  shape: tuple[int, ...]
  produce: Callable[[], np.ndarray]


def _plan_shards(entries: list[Entry], max_shard_bytes: int) -> list[list[Entry]]:
  shards, size = [[]], 0
  for e in entries:
    nbytes = 4 * int(np.prod(e.shape))
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += nbytes
  return shards


def write(out_dir: pathlib.Path, entries: list[Entry], max_shard_bytes: int) -> list[str]:
  """float32 tensors into model.safetensors, or past max_shard_bytes into
  model-0000K-of-0000N.safetensors with model.safetensors.index.json; returns file names."""
  shards = _plan_shards(entries, max_shard_bytes)
  names = ([SINGLE] if len(shards) == 1 else
           [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
  weight_map, total = {}, 0
  for file_name, shard in zip(names, shards):
    tensors = {}
    for e in shard:
      array = np.ascontiguousarray(e.produce(), dtype=np.float32)
      if array.shape != tuple(e.shape):
        raise AssertionError(f"{e.name}: produced {array.shape}, planned {e.shape}")
      tensors[e.name] = array
      weight_map[e.name] = file_name
      total += array.nbytes
    # "pt": transformers refuses safetensors files without a known format tag
    st_numpy.save_file(tensors, str(out_dir / file_name), metadata={"format": "pt"})
    del tensors
  if len(shards) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2))
  return names
