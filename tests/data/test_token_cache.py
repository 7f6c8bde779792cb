"""Token cache: built once and reused, rebuilt when a file or the tokenizer changes, the same
tokens from parallel workers as from one, uint16/uint32 shards, nothing left on failure."""
import json
import os
import pathlib

import numpy as np
import pytest

from treadle.data import sources
from treadle.data import token_cache
from treadle.data import tokenizers


def _write(path, docs):
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


@pytest.fixture
def source(tmp_path):
  d = tmp_path / "data"
  d.mkdir()
  for f in range(4):
    _write(d / f"part{f}.jsonl", [f"file {f} document {i} " * (i % 5 + 1) for i in range(30)])
  return sources.Source("web", sources.expand(str(d)))


def _store(source, tok, field, root, workers):
  return token_cache.build_or_load([source], tok, field, root, workers)[0]


def _expected(source, tok):
  docs = [d for f in source.files for d in sources.read_documents(f, "text")]
  return tokenizers.encode_documents(tok, docs)


def test_built_once_then_reused(source, tmp_path, monkeypatch):
  tok = tokenizers.fit("byte", "")
  store = _store(source, tok, "text", tmp_path / "cache", workers=1)
  flat, lengths = _expected(source, tok)
  np.testing.assert_array_equal(store.read(np.arange(store.num_tokens)), flat)
  np.testing.assert_array_equal(np.diff(store.doc_starts), lengths)
  assert store.num_documents == 120 and store.shards[0].dtype == np.uint16
  assert int(flat[lengths[0] - 1]) == tok.eot_id  # each document ends with end of text

  def fail(*args):
    raise AssertionError("tokenized again")
  monkeypatch.setattr(token_cache, "tokenize_group", fail)
  again = _store(source, tok, "text", tmp_path / "cache", workers=1)
  assert again.path == store.path
  np.testing.assert_array_equal(again.read(np.arange(again.num_tokens)), flat)


def test_a_changed_file_or_tokenizer_rebuilds(source, tmp_path):
  byte = tokenizers.fit("byte", "")
  first = _store(source, byte, "text", tmp_path / "cache", workers=1)
  _write(pathlib.Path(source.files[2]), ["a changed document"])
  changed = _store(source, byte, "text", tmp_path / "cache", workers=1)
  assert changed.path != first.path and changed.num_documents == 91
  np.testing.assert_array_equal(changed.read(np.arange(changed.num_tokens)),
                                _expected(source, byte)[0])
  char = tokenizers.fit("char", "".join(
      d for f in source.files for d in sources.read_documents(f, "text")))
  other = _store(source, char, "text", tmp_path / "cache", workers=1)
  assert other.path not in (first.path, changed.path)
  entries = sorted(p.name for p in (tmp_path / "cache" / "tokens").iterdir())
  assert len(entries) == 3 and not [e for e in entries if "tmp" in e]


def test_parallel_workers_write_the_same_tokens(source, tmp_path, monkeypatch):
  monkeypatch.setattr(token_cache, "MAX_SHARD_SOURCE_BYTES", 3000)  # several shards
  tok = tokenizers.fit("bpe", "file document " * 50, vocab_size=280)
  serial = _store(source, tok, "text", tmp_path / "one", workers=1)
  parallel = _store(source, tok, "text", tmp_path / "two", workers=2)
  assert len(parallel.shards) > 1
  np.testing.assert_array_equal(parallel.read(np.arange(parallel.num_tokens)),
                                serial.read(np.arange(serial.num_tokens)))
  np.testing.assert_array_equal(parallel.doc_starts, serial.doc_starts)


def test_large_vocabularies_use_uint32(tmp_path):
  chars = "".join(chr(c) for c in range(0x20000, 0x20000 + 70_000))  # no surrogates here
  tok = tokenizers.CharTokenizer(chars)
  assert tok.vocab_size > 1 << 16
  path = tmp_path / "wide.txt"
  path.write_text(chars[-50:])
  store = _store(sources.Source("w", (str(path),)), tok, "text",
                                    tmp_path / "cache", workers=1)
  assert store.shards[0].dtype == np.uint32
  np.testing.assert_array_equal(store.read(np.arange(50)), tok.encode(chars[-50:]))
  assert store.read(np.array([50]))[0] == tok.eot_id > 1 << 16


def test_a_failed_build_leaves_nothing(source, tmp_path):
  bad = source.files[3]
  with open(bad, "a") as f:
    f.write('{"text": "ok"}\n{"txt": "wrong field"}\n')
  with pytest.raises(ValueError, match=r"part3\.jsonl:32: no field 'text'"):
    _store(source, tokenizers.fit("byte", ""), "text", tmp_path / "cache", workers=2)
  assert not (tmp_path / "cache").exists()


def _rss_file_kib() -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_random_reads_keep_the_shards_out_of_rss(tmp_path):
  """Training reads windows all over a corpus; the mapped pages must not pile up in RSS."""
  tokens = np.random.default_rng(0).integers(0, 60000, 48 << 20, dtype=np.uint16)  # 96 MiB
  (tmp_path / "shard_00000.bin").write_bytes(tokens.tobytes())
  np.save(tmp_path / "documents.npy", np.array([0, tokens.size]))
  (tmp_path / "manifest.json").write_text(json.dumps(
      {"dtype": "uint16", "shards": [{"file": "shard_00000.bin", "tokens": int(tokens.size)}]}))
  store = token_cache.open_store(tmp_path)
  rng = np.random.default_rng(1)
  before = _rss_file_kib()
  for _ in range(100):  # 100 batches of 12 windows of 65 tokens
    starts = rng.integers(0, tokens.size - 65, 12)
    positions = starts[:, None] + np.arange(65)
    np.testing.assert_array_equal(store.read(positions), tokens[positions])
  assert _rss_file_kib() - before < 8 << 10


def test_same_size_and_mtime_with_other_content_rebuilds(tmp_path):
  """The key is the files' content: a rewrite that keeps size and mtime is not the old text."""
  path = tmp_path / "corpus.txt"
  path.write_text("abcabc")
  source = sources.Source("data", (str(path),))
  tok = tokenizers.fit("byte", "")
  first = _store(source, tok, "text", tmp_path / "cache", workers=1)
  stat = path.stat()
  path.write_text("xyzxyz")
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
  again = _store(source, tok, "text", tmp_path / "cache", workers=1)
  assert again.path != first.path
  np.testing.assert_array_equal(again.read(np.arange(6)), tok.encode("xyzxyz"))


def _damage_manifest(change):
  def damage(entry: pathlib.Path):
    manifest = json.loads((entry / "manifest.json").read_text())
    change(manifest)
    (entry / "manifest.json").write_text(json.dumps(manifest))
  return damage


def _set_shard_file(manifest):
  manifest["shards"][0]["file"] = "../x"


def _set_dtype(manifest):
  manifest["dtype"] = "int8"


def _set_shard_tokens(manifest):
  manifest["shards"][0]["tokens"] += 1


def _truncate_shard(entry: pathlib.Path):
  shard = entry / "shard_00000.bin"
  shard.write_bytes(shard.read_bytes()[:-2])


def _token_out_of_vocabulary(entry: pathlib.Path):
  shard = entry / "shard_00000.bin"
  tokens = np.fromfile(shard, np.uint16)
  tokens[3] = 300  # the byte tokenizer's vocabulary is 257
  shard.write_bytes(tokens.tobytes())


def _truncate_documents(entry: pathlib.Path):
  np.save(entry / "documents.npy", np.load(entry / "documents.npy")[:-1])


def _garble_manifest(entry: pathlib.Path):
  (entry / "manifest.json").write_text('{"dtype": "uint16", "shar')


@pytest.mark.parametrize("damage,reason", [
    (_damage_manifest(_set_shard_file), "'../x' is not a shard file name"),
    (_damage_manifest(_set_dtype), "dtype 'int8', expected 'uint16'"),
    (_damage_manifest(_set_shard_tokens), "holds 178 bytes, the manifest says 180"),
    (_truncate_shard, "holds 176 bytes, the manifest says 178"),
    (_token_out_of_vocabulary, "token id 300 >= the vocabulary size 257"),
    (_truncate_documents, "documents.npy"),
    (_garble_manifest, "manifest.json is not readable"),
])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, caplog, damage, reason):
  """The cache is only a cache: an entry that fails its checks is never read but rebuilt."""
  path = tmp_path / "corpus.txt"
  text = "to be or not to be " * 4 + "x" * 11  # 89 tokens with end of text: 178 bytes
  path.write_text(text + "\n")
  source = sources.Source("data", (str(path),))
  tok = tokenizers.fit("byte", "")
  first = _store(source, tok, "text", tmp_path / "cache", workers=1)
  expected = first.read(np.arange(first.num_tokens))
  damage(first.path)
  with caplog.at_level("WARNING", logger="treadle"):
    again = _store(source, tok, "text", tmp_path / "cache", workers=1)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 1 and reason in warnings[0] and "rebuilding" in warnings[0], warnings
  assert again.path == first.path
  np.testing.assert_array_equal(again.read(np.arange(again.num_tokens)), expected)
  assert [p.name for p in (tmp_path / "cache" / "tokens").iterdir()] == [first.path.name]
