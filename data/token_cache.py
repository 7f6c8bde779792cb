"""The token cache: a source tokenized once into flat memory-mapped token shards.

`<cache>/tokens/<key>/` holds `shard_NNNNN.bin` (every document's tokens followed by end of
text, uint16 when the vocabulary fits, else uint32), `documents.npy` (where each document
starts, over the shards laid end to end, plus the total) and `manifest.json`. The key hashes
the source files' fingerprints (path, size, sha256 of the content), the text field and the
tokenizer, so a changed file or tokenizer builds a new entry and the next run reuses it.
An entry is written into a temporary directory, synced, and renamed into place: a reader
never sees half an entry, and a failed build leaves nothing behind. An existing entry is
checked before use (see `_damage`); a damaged one is rebuilt with a warning, never read.
"""
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import pathlib
import re
import shutil
import tempfile
import time

import numpy as np
import tqdm

from treadle.data import sources as sources_lib
from treadle.data import tokenizers

log = logging.getLogger("treadle")
VERSION = 1
MAX_SHARD_SOURCE_BYTES = 256 << 20  # files are grouped into shards of about this much input
_ENCODE_CHARS = 4 << 20             # documents are encoded in batches of about this much text
# tokens per read when checking an entry's ids before use; the check scans every shard on
# every load: 100M uint16 tokens (200 MB, page cache warm) took 0.03-0.05 s on Zen 3
_SCAN_TOKENS = 8 << 20


def cache_root(cache_dir: str) -> pathlib.Path:
  """`data.cache_dir`, else $TREADLE_CACHE, else ~/.cache/treadle."""
  root = cache_dir or os.environ.get("TREADLE_CACHE") or pathlib.Path.home() / ".cache" / "treadle"
  return pathlib.Path(root).expanduser()


def digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]


@dataclasses.dataclass
class Store:
  """A source's token shards, memory-mapped: reads touch only the pages they need."""
  path: pathlib.Path
  shards: list[np.ndarray]
  shard_starts: np.ndarray  # global offset of each shard, then the total
  doc_starts: np.ndarray    # global offset of each document, then the total

  @property
  def num_documents(self) -> int:
    return len(self.doc_starts) - 1

  @property
  def num_tokens(self) -> int:
    return int(self.shard_starts[-1])

  def read(self, positions: np.ndarray) -> np.ndarray:
    """Tokens at global positions (any shape) as int32."""
    out = np.empty(positions.shape, np.int32)
    shard = np.searchsorted(self.shard_starts, positions, side="right") - 1
    for s in np.unique(shard):
      where = shard == s
      out[where] = self.shards[s][positions[where] - self.shard_starts[s]]
      _unmap_pages(self.shards[s])
    return out


def _unmap_pages(shard: np.ndarray) -> None:
  """Drops the pages a read mapped into this process. They stay in the page cache (reading
  them again costs no disk I/O) but leave its RSS, which would otherwise grow towards the
  corpus size: each fault maps a large folio around the page read (measured: 50 batches of
  the CPU recipe on a 1 GB corpus mapped 440 MiB)."""
  mapping = getattr(shard, "_mmap", None)
  if mapping is not None:
    mapping.madvise(mmap.MADV_DONTNEED)


def open_store(path: pathlib.Path) -> Store:
  manifest = json.loads((path / "manifest.json").read_text())
  dtype = np.dtype(manifest["dtype"])
  shards = [np.memmap(path / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],))
            if s["tokens"] else np.zeros(0, dtype) for s in manifest["shards"]]
  starts = np.concatenate([[0], np.cumsum([s["tokens"] for s in manifest["shards"]])])
  return Store(path, shards, starts.astype(np.int64), np.load(path / "documents.npy"))


def entry_path(prints: list, tokenizer: tokenizers.Tokenizer, text_field: str,
               root: pathlib.Path) -> pathlib.Path:
  """`prints`: the source's `sources.fingerprint` (its files' content hashes)."""
  key = digest({"version": VERSION, "files": prints, "text_field": text_field,
                "tokenizer": tokenizer.to_json()})
  return root / "tokens" / key


def build_or_load(srcs: list[sources_lib.Source], tokenizer: tokenizers.Tokenizer,
                  text_field: str, root: pathlib.Path, workers: int = 0,
                  prints: list | None = None) -> list[Store]:
  """Each source's cache entry, tokenizing those without an intact one first. All or
  nothing: a bad file in any source leaves no new entry (and no empty folder) behind.
  `prints`: each source's fingerprint when the caller has hashed the files already."""
  prints = prints or [sources_lib.fingerprint(s.files) for s in srcs]
  paths = [entry_path(p, tokenizer, text_field, root) for p in prints]
  built = []
  try:
    for source, fp, path in zip(srcs, prints, paths):
      if not _usable(path, tokenizer) and path not in (b[2] for b in built):
        built.append((*_build(source, fp, tokenizer, text_field, path,
                              workers or os.cpu_count() or 1), path))
    for tmp, report, path in built:
      _commit(tmp, path)
      log.info("%s -> %s", report, path)
  finally:
    for tmp, _, _ in built:
      shutil.rmtree(tmp, ignore_errors=True)
    _remove_if_empty(root / "tokens")
  return [open_store(p) for p in paths]


def _usable(path: pathlib.Path, tokenizer: tokenizers.Tokenizer) -> bool:
  """Whether `path` holds an intact entry. A damaged one is removed (it is only a cache:
  the sources are still there) so that it is rebuilt, never read."""
  if not path.exists():
    return False
  reason = _damage(path, tokenizer.vocab_size)
  if reason is None:
    return True
  log.warning("token cache entry %s is damaged (%s); rebuilding it", path, reason)
  trash = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.damaged-"))
  try:
    os.rename(path, trash / path.name)  # out of the way at once, even if removal is slow
  except FileNotFoundError:
    pass  # another process found it damaged too and moved it first
  shutil.rmtree(trash, ignore_errors=True)
  return False


def _damage(path: pathlib.Path, vocab_size: int) -> str | None:
  """What is wrong with the entry at `path` (None if nothing): an unreadable manifest, a
  shard name that leaves the entry, a dtype or shard size other than the build writes,
  document offsets that do not match the shards, a token id outside the vocabulary."""
  try:
    manifest = json.loads((path / "manifest.json").read_text())
  except FileNotFoundError:
    return "no manifest.json"
  except ValueError as e:
    return f"manifest.json is not readable: {e}"
  try:
    dtype = np.dtype(manifest["dtype"])
    shards = [(s["file"], int(s["tokens"])) for s in manifest["shards"]]
  except (TypeError, KeyError, ValueError) as e:
    return f"manifest.json lacks a field or has a wrong one: {e!r}"
  expected = _dtype(vocab_size)
  if dtype != expected:
    return f"dtype {dtype.name!r}, expected {np.dtype(expected).name!r}"
  for name, tokens in shards:
    reason = _shard_damage(path, name, tokens, dtype, vocab_size)
    if reason:
      return reason
  return _documents_damage(path, sum(t for _, t in shards))


def _dtype(vocab_size: int) -> type:
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _shard_damage(path: pathlib.Path, name, tokens: int, dtype: np.dtype, vocab_size: int
                  ) -> str | None:
  if not isinstance(name, str) or not re.fullmatch(r"shard_\d{5}\.bin", name):
    return f"{name!r} is not a shard file name"
  try:
    size = os.path.getsize(path / name)
  except FileNotFoundError:
    return f"{name} is missing"
  if tokens < 0 or size != tokens * dtype.itemsize:
    return f"{name} holds {size} bytes, the manifest says {tokens * dtype.itemsize}"
  # Read, not memory-mapped: the scan must not leave the shard in this process's RSS.
  with open(path / name, "rb") as f:
    while len(chunk := np.fromfile(f, dtype, _SCAN_TOKENS)):
      if (top := int(chunk.max())) >= vocab_size:
        return f"{name}: token id {top} >= the vocabulary size {vocab_size}"
  return None


def _documents_damage(path: pathlib.Path, total: int) -> str | None:
  try:
    starts = np.load(path / "documents.npy", allow_pickle=False)
  except (OSError, ValueError) as e:
    return f"documents.npy is not readable: {e}"
  if (starts.dtype != np.int64 or starts.ndim != 1 or len(starts) < 2 or starts[0] != 0
      or starts[-1] != total or (np.diff(starts) <= 0).any()):
    return f"documents.npy does not describe documents over the {total} tokens"
  return None


def _groups(files: tuple[str, ...], workers: int) -> list[list[str]]:
  """Consecutive files grouped into shards: enough groups to keep every worker busy."""
  sizes = [os.path.getsize(f) for f in files]
  target = max(min(MAX_SHARD_SOURCE_BYTES, sum(sizes) // workers), 1)
  groups, current, size = [], [], 0
  for f, n in zip(files, sizes):
    if current and size + n > target:
      groups.append(current)
      current, size = [], 0
    current.append(f)
    size += n
  return groups + [current]


def _build(source, prints: list, tokenizer, text_field: str, path: pathlib.Path,
           workers: int) -> tuple[pathlib.Path, str]:
  """Tokenizes a source into a new temporary directory beside `path`; returns it and a
  report of the speed (logged once the entry is committed)."""
  groups = _groups(source.files, workers)
  dtype = _dtype(tokenizer.vocab_size)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
  try:
    start = time.perf_counter()
    results = _tokenize_all(groups, tokenizer, text_field, dtype, tmp, workers)
    _finish(source, prints, results, dtype, tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  seconds = time.perf_counter() - start
  megabytes = sum(os.path.getsize(f) for f in source.files) / 1e6
  return tmp, (f"tokenized {source.name}: {len(source.files)} files, {megabytes:.1f} MB in "
               f"{seconds:.1f} s ({megabytes / seconds:.1f} MB/s, "
               f"{min(workers, len(groups))} workers)")


def _remove_if_empty(directory: pathlib.Path) -> None:
  """A failed first build leaves no empty cache folders behind (the folder, its parent)."""
  for d in (directory, directory.parent):
    try:
      d.rmdir()
    except OSError:
      return


def _tokenize_all(groups, tokenizer, text_field, dtype, tmp: pathlib.Path, workers: int):
  spec = json.dumps(tokenizer.to_json())
  jobs = [(spec, g, text_field, np.dtype(dtype).name, str(tmp / f"shard_{i:05d}.bin"))
          for i, g in enumerate(groups)]
  total = sum(os.path.getsize(f) for g in groups for f in g)
  bar = tqdm.tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=None)
  results = [None] * len(jobs)
  try:
    if workers == 1 or len(jobs) == 1:
      for i, job in enumerate(jobs):
        results[i] = tokenize_group(*job)
        bar.update(sum(os.path.getsize(f) for f in job[1]))
      return results
    # spawn, not fork: the parent may hold jax's and HF tokenizers' threads
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                                initializer=_single_threaded) as pool:
      futures = {pool.submit(tokenize_group, *job): i for i, job in enumerate(jobs)}
      for future in concurrent.futures.as_completed(futures):
        i = futures[future]
        results[i] = future.result()  # a worker's ValueError surfaces here, unchanged
        bar.update(sum(os.path.getsize(f) for f in jobs[i][1]))
    return results
  finally:
    bar.close()


def _single_threaded() -> None:
  """Worker processes are the parallelism; HF tokenizers' own threads would oversubscribe."""
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  os.environ["RAYON_NUM_THREADS"] = "1"


def _finish(source, prints: list, results, dtype, tmp: pathlib.Path) -> None:
  lengths = np.concatenate([r[1] for r in results])
  if not len(lengths):
    what = repr(source.files[0]) if len(source.files) == 1 else f"{len(source.files)} files"
    raise ValueError(f"{source.key}: {what} is empty (no documents)")
  with open(tmp / "documents.npy", "wb") as f:
    np.save(f, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    _sync(f)
  manifest = {"version": VERSION, "dtype": np.dtype(dtype).name, "source": source.name,
              "files": prints, "documents": len(lengths),
              "tokens": int(lengths.sum()),
              "shards": [{"file": f"shard_{i:05d}.bin", "tokens": int(r[0])}
                         for i, r in enumerate(results)]}
  with open(tmp / "manifest.json", "w") as f:
    f.write(json.dumps(manifest, indent=1))
    _sync(f)


def _sync(f) -> None:
  """Data on disk before the rename that publishes it: after a power cut the rename may
  survive while unsynced pages do not, leaving a committed entry of zeros."""
  f.flush()
  os.fsync(f.fileno())


def _commit(tmp: pathlib.Path, path: pathlib.Path) -> None:
  try:
    os.rename(tmp, path)  # atomic; fails if another process finished the same entry first
  except OSError:
    if not (path / "manifest.json").exists():
      raise
  directory = os.open(path.parent, os.O_RDONLY)
  try:
    os.fsync(directory)  # the rename itself
  finally:
    os.close(directory)


_TOKENIZERS: dict[str, tokenizers.Tokenizer] = {}


def tokenize_group(spec: str, files: list[str], text_field: str, dtype: str, out: str
                   ) -> tuple[int, np.ndarray]:
  """Tokenizes files into one shard file; returns (token count, each document's length)."""
  tokenizer = _TOKENIZERS.get(spec) or _TOKENIZERS.setdefault(
      spec, tokenizers.from_json(json.loads(spec)))
  lengths, count = [], 0
  with open(out, "wb") as f:
    batch, chars = [], 0
    for file in files:
      for doc in sources_lib.read_documents(file, text_field):
        batch.append(doc)
        chars += len(doc)
        if chars >= _ENCODE_CHARS:
          count += _write_batch(tokenizer, batch, dtype, f, lengths)
          batch, chars = [], 0
    count += _write_batch(tokenizer, batch, dtype, f, lengths)
    _sync(f)
  return count, (np.concatenate(lengths) if lengths else np.zeros(0, np.int64))


def _write_batch(tokenizer, docs: list[str], dtype: str, f, lengths: list) -> int:
  if not docs:
    return 0
  flat, doc_lengths = tokenizers.encode_documents(tokenizer, docs)
  f.write(flat.astype(dtype).tobytes())
  lengths.append(doc_lengths)
  return len(flat)
