"""Data fingerprints of a run: memory-mapped token shards hash as their bytes, read from the
file, so fingerprinting a corpus larger than memory does not map it into the process."""
import types

import numpy as np

from treadle.train import workdir


def _rss_file_kib() -> int:
  """Resident pages of mapped files in this process (they count in its RSS)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def _shard(tmp_path, tokens: int) -> np.memmap:
  path = tmp_path / "shard_00000.bin"
  np.random.default_rng(0).integers(0, 65535, tokens, dtype=np.uint16).tofile(path)
  return np.memmap(path, dtype=np.uint16, mode="r", offset=2 * 1000, shape=(tokens - 1000,))


def test_mapped_splits_hash_as_their_bytes(tmp_path):
  shard = _shard(tmp_path, 3_000_000)
  views = types.SimpleNamespace(train=[shard[:2_000_000], np.arange(5)],
                                val=shard[2_000_000:2_500_001], test=shard[2_500_001:])
  copies = types.SimpleNamespace(train=[np.array(shard[:2_000_000]), np.arange(5)],
                                 val=np.array(shard[2_000_000:2_500_001]),
                                 test=np.array(shard[2_500_001:]))
  assert workdir.data_fingerprint(views) == workdir.data_fingerprint(copies)
  changed = types.SimpleNamespace(**{**vars(copies), "test": copies.test + 1})
  assert workdir.data_fingerprint(views) != workdir.data_fingerprint(changed)


def test_fingerprinting_a_mapped_corpus_keeps_it_out_of_rss(tmp_path):
  shard = _shard(tmp_path, 32 << 20)  # 64 MiB
  splits = types.SimpleNamespace(train=shard[: 30 << 20], val=shard[30 << 20:], test=[])
  before = _rss_file_kib()
  workdir.data_fingerprint(splits)
  assert _rss_file_kib() - before < 8 << 10  # < 8 MiB of the 64 MiB mapped
