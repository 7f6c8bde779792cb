"""The token cache: a source tokenized once into flat memory-mapped token shards.

`<cache>/tokens/<key>/` holds `shard_NNNNN.bin` (every document's tokens followed by end of
text, uint16 when the vocabulary fits, else uint32), `documents.npy` (where each document
starts, over the shards laid end to end, plus the total) and `manifest.json`. The key hashes
the source files' fingerprints (path, size, modification time), the text field and the
tokenizer, so a changed file or tokenizer builds a new entry and the next run reuses it.
An entry is written into a temporary directory and renamed into place: a reader never sees
half an entry, and a failed build leaves nothing behind.
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


def entry_path(source: sources_lib.Source, tokenizer: tokenizers.Tokenizer, text_field: str,
               root: pathlib.Path) -> pathlib.Path:
  key = digest({"version": VERSION, "files": sources_lib.fingerprint(source.files),
                "text_field": text_field, "tokenizer": tokenizer.to_json()})
  return root / "tokens" / key


def build_or_load(srcs: list[sources_lib.Source], tokenizer: tokenizers.Tokenizer,
                  text_field: str, root: pathlib.Path, workers: int = 0) -> list[Store]:
  """Each source's cache entry, tokenizing those without an up-to-date one first. All or
  nothing: a bad file in any source leaves no new entry (and no empty folder) behind."""
  paths = [entry_path(s, tokenizer, text_field, root) for s in srcs]
  built = []
  try:
    for source, path in zip(srcs, paths):
      if not (path / "manifest.json").exists() and path not in (b[2] for b in built):
        built.append((*_build(source, tokenizer, text_field, path,
                              workers or os.cpu_count() or 1), path))
    for tmp, report, path in built:
      _commit(tmp, path)
      log.info("%s -> %s", report, path)
  finally:
    for tmp, _, _ in built:
      shutil.rmtree(tmp, ignore_errors=True)
    _remove_if_empty(root / "tokens")
  return [open_store(p) for p in paths]


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


def _build(source, tokenizer, text_field: str, path: pathlib.Path, workers: int
           ) -> tuple[pathlib.Path, str]:
  """Tokenizes a source into a new temporary directory beside `path`; returns it and a
  report of the speed (logged once the entry is committed)."""
  groups = _groups(source.files, workers)
  dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
  try:
    start = time.perf_counter()
    results = _tokenize_all(groups, tokenizer, text_field, dtype, tmp, workers)
    _finish(source, results, dtype, tmp)
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


def _finish(source, results, dtype, tmp: pathlib.Path) -> None:
  lengths = np.concatenate([r[1] for r in results])
  if not len(lengths):
    what = repr(source.files[0]) if len(source.files) == 1 else f"{len(source.files)} files"
    raise ValueError(f"{source.key}: {what} is empty (no documents)")
  np.save(tmp / "documents.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
  manifest = {"version": VERSION, "dtype": np.dtype(dtype).name, "source": source.name,
              "files": sources_lib.fingerprint(source.files), "documents": len(lengths),
              "tokens": int(lengths.sum()),
              "shards": [{"file": f"shard_{i:05d}.bin", "tokens": int(r[0])}
                         for i, r in enumerate(results)]}
  (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _commit(tmp: pathlib.Path, path: pathlib.Path) -> None:
  try:
    os.rename(tmp, path)  # atomic; fails if another process finished the same entry first
  except OSError:
    if not (path / "manifest.json").exists():
      raise


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
  return count, (np.concatenate(lengths) if lengths else np.zeros(0, np.int64))


def _write_batch(tokenizer, docs: list[str], dtype: str, f, lengths: list) -> int:
  if not docs:
    return 0
  flat, doc_lengths = tokenizers.encode_documents(tokenizer, docs)
  f.write(flat.astype(dtype).tobytes())
  lengths.append(doc_lengths)
  return len(flat)
