"""Sources: path specs (file, directory, glob, comma list), formats by extension, and one-line
errors naming the file (and line) for bad input."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from treadle.data import sources

DOCS = ["first document\nwith two lines", "second — naïve café", "third 🎉"]


def _jsonl(docs, field="text") -> str:
  return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))


@pytest.fixture
def corpus_dir(tmp_path):
  d = tmp_path / "corpus"
  (d / "sub").mkdir(parents=True)
  (d / "a.txt").write_text(DOCS[0])
  (d / "b.jsonl").write_text(_jsonl(DOCS) + "\n")  # a trailing blank line is skipped
  (d / "sub" / "c.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS[:2]).encode()))
  (d / "sub" / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
      _jsonl(DOCS[1:]).encode()))
  pq.write_table(pa.table({"text": DOCS, "n": [1, 2, 3]}), d / "e.parquet")
  (d / "README.md").write_text("not a corpus file: skipped in a directory")
  (d / ".hidden").mkdir()
  (d / ".hidden" / "x.txt").write_text("hidden: skipped")
  return d


def test_every_format_reads_its_documents(corpus_dir):
  read = {p.name: list(sources.read_documents(str(p), "text"))
          for p in corpus_dir.rglob("*") if p.is_file() and sources.extension(p.name)}
  assert read == {"a.txt": DOCS[:1], "b.jsonl": DOCS, "c.jsonl.gz": DOCS[:2],
                  "d.jsonl.zst": DOCS[1:], "e.parquet": DOCS, "x.txt": ["hidden: skipped"]}


def test_directory_glob_and_comma_lists_expand_in_order(corpus_dir):
  names = lambda files: [f.rsplit("/", 1)[1] for f in files]  # noqa: E731
  assert names(sources.expand(str(corpus_dir))) == [
      "a.txt", "b.jsonl", "e.parquet", "c.jsonl.gz", "d.jsonl.zst"]  # sorted paths, no hidden
  assert names(sources.expand(f"{corpus_dir}/**/*.jsonl*")) == [
      "b.jsonl", "c.jsonl.gz", "d.jsonl.zst"]
  assert names(sources.expand(f"{corpus_dir}/e.parquet, {corpus_dir}/a.txt,"
                              f"{corpus_dir}/e.parquet")) == ["e.parquet", "a.txt"]


def test_mixture_specs():
  assert sources.parse_mixture("web=/d/web/*.jsonl:0.7, books=/d/b:0.3") == [
      ("web", "/d/web/*.jsonl", 0.7), ("books", "/d/b", 0.3)]
  for bad in ["web=/d:0", "web=/d", "/d:0.5", "a=/x:1,a=/y:1", "web=/d:x"]:
    with pytest.raises(ValueError, match="data.mixture"):
      sources.parse_mixture(bad)


def test_bad_paths_are_one_line_errors(tmp_path):
  (tmp_path / "x.csv").write_text("a,b")
  with pytest.raises(ValueError, match=r"x\.csv' has an unknown extension \(use one of .txt"):
    sources.expand(str(tmp_path / "x.csv"))
  with pytest.raises(ValueError, match=r"x\.csv' has an unknown extension"):
    sources.expand(str(tmp_path / "*.csv"))
  with pytest.raises(FileNotFoundError, match="no such file or directory .*nope"):
    sources.expand(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="matches no files"):
    sources.expand(str(tmp_path / "*.jsonl"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no .txt/.jsonl"):
    sources.expand(str(tmp_path / "empty"))


def test_bad_records_name_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON line"):
    list(sources.read_documents(str(path), "text"))
  path.write_text('{"text": "ok"}\n\n{"body": "no text"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: no field 'text'"):
    list(sources.read_documents(str(path), "text"))
  path.write_text('{"text": 3}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'text' is int"):
    list(sources.read_documents(str(path), "text"))
  pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
  with pytest.raises(ValueError, match=r"t\.parquet: no column 'text'"):
    list(sources.read_documents(str(tmp_path / "t.parquet"), "text"))
  (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 100)[:-20])
  with pytest.raises(ValueError, match=r"trunc\.jsonl\.gz: cannot be read"):
    list(sources.read_documents(str(tmp_path / "trunc.jsonl.gz"), "text"))
