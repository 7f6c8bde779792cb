"""Files of a Hugging Face model directory, read only from inside it.

A name that leaves the directory (`../x`, `/abs/path`, from a hostile weight_map) is refused,
and so is a symlink whose target lies outside it, with one exception: a snapshot of the HF
hub cache (`<repo>/snapshots/<revision>/model.safetensors -> ../../blobs/<sha>`) links every
file into its repository's `blobs/`, and those links are followed. So no directory handed to
the importer can make it read (and copy into a run) a file it does not contain.
"""
import json
import pathlib

from treadle.hf.config_fields import HfFormatError
from treadle.hf.config_fields import shown


def _cache_blobs(root: pathlib.Path) -> pathlib.Path | None:
  """`<repo>/blobs` when `root` (resolved) is `<repo>/snapshots/<revision>` or inside one."""
  for p in (root, *root.parents):
    if p.parent.name == "snapshots":
      return p.parent.parent / "blobs"
  return None


def path(hf_dir: pathlib.Path, name: str, source: str) -> pathlib.Path:
  """`hf_dir/name`, checked to be named inside `hf_dir` and to resolve inside it (or into
  the HF cache's blobs/); `source` names who named it (a file, for the error)."""
  relative = pathlib.PurePosixPath(name)  # HF names files with '/' on every system
  if not name or relative.is_absolute() or ".." in relative.parts:
    raise HfFormatError(f"{source} names {name!r}, which is outside {str(hf_dir)!r} "
                        "(only files inside the directory are read)")
  candidate = hf_dir / relative
  try:
    root, target = hf_dir.resolve(), candidate.resolve()
  except (OSError, RuntimeError) as e:  # a symlink loop
    raise HfFormatError(f"{str(candidate)!r} cannot be resolved ({e})") from None
  blobs = _cache_blobs(root)
  if target.is_relative_to(root) or (blobs is not None and target.is_relative_to(blobs.resolve())):
    return candidate
  raise HfFormatError(f"{str(candidate)!r} links to {str(target)!r}, outside {str(hf_dir)!r} "
                      "(only links into a Hugging Face cache's blobs/ are followed)")


def read_text(file: pathlib.Path) -> str:
  try:
    return file.read_text(encoding="utf-8")
  except UnicodeDecodeError:
    raise HfFormatError(f"{str(file)!r} is not UTF-8 text") from None
  except OSError as e:
    raise HfFormatError(f"{str(file)!r} cannot be read ({e.strerror or type(e).__name__})"
                        ) from None


def read_object(file: pathlib.Path) -> dict:
  """A JSON file that must hold an object (dict)."""
  text = read_text(file)
  try:
    body = json.loads(text)
  except ValueError as e:
    raise HfFormatError(f"{str(file)!r} is not valid JSON ({e})") from None
  except RecursionError:
    raise HfFormatError(f"{str(file)!r} is not valid JSON (nested too deeply)") from None
  if not isinstance(body, dict):
    raise HfFormatError(f"{str(file)!r} must hold a JSON object, got {shown(body)}")
  return body
