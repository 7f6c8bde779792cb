"""treadle-prepare and treadle-train on corpora of many files: the cache is built once and
reused by training, bad input is one line and exit 2 with nothing written, and resume is
bitwise exact with a mixture and packing."""
import json
import re

import pytest

from treadle.data import mixture as mixture_lib
from tests.conftest import run_cli
from tests.train.test_resume import N, _assert_same_run

TINY = ["--config", "configs/tiny.py", "--config.train.log_every=1",
        f"--config.train.checkpoint_every={N}", f"--config.optimizer.decay_steps={2 * N}",
        "--config.data.prepare_workers=1"]


def _write(path, docs, field="text"):
  path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs))
  return path


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
  d = tmp_path_factory.mktemp("mixture")
  (d / "web").mkdir()
  for f in range(2):
    _write(d / "web" / f"{f}.jsonl", [f"web page {f}.{i}: " + "the sea is calm " * (i % 6 + 1)
                                      for i in range(150)])
  _write(d / "books.jsonl", [f"chapter {i}. " + "o romeo wherefore art thou " * (i % 4 + 1)
                             for i in range(120)])
  return f"--config.data.mixture=web={d / 'web'}:0.7,books={d / 'books.jsonl'}:0.3"


def test_prepared_cache_is_reused_by_training(tmp_path, mixture):
  cache = f"--config.data.cache_dir={tmp_path / 'cache'}"
  out = run_cli("treadle.train.prepare", *TINY, mixture, cache)
  assert "web: 300 documents" in out.stdout and "books: 120 documents" in out.stdout
  assert out.stderr.count("tokenized ") == 2
  entries = sorted((tmp_path / "cache" / "tokens").iterdir())
  trained = run_cli("treadle.train.main", *TINY, mixture, cache, "--workdir", tmp_path / "run",
                    "--config.train.num_steps=2", "--config.data.packing=True")
  assert "tokenized " not in trained.stderr  # read from the cache, not tokenized again
  assert sorted((tmp_path / "cache" / "tokens").iterdir()) == entries
  web = mixture_lib.realised((0.7, 0.3), 1337, 16)[0]  # the seed of configs/tiny.py
  assert f"mixture over 16 training examples: web {web:.4f} (weight 0.7000)" in trained.stderr


def _bad_inputs(tmp_path):
  good = _write(tmp_path / "good.jsonl", ["fine text " * 20] * 50)
  missing = _write(tmp_path / "missing.jsonl", ["fine"] * 3 + [None], field="body")
  malformed = tmp_path / "malformed.jsonl"
  malformed.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": "cut\n')
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "a.jsonl").write_text("\n")
  (tmp_path / "t.csv").write_text("text\nx\n")
  return [(f"--config.data.path={good},{missing}", r"missing.jsonl:1: no field 'text'"),
          (f"--config.data.path={malformed}", r"malformed.jsonl:3: malformed JSON line"),
          (f"--config.data.mixture=a={good}:1,b={tmp_path / 'empty'}:1",
           r"data.mixture source 'b': .*a.jsonl' is empty"),
          (f"--config.data.path={tmp_path / 't.csv'}", r"t.csv' has an unknown extension")]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
  cache = tmp_path / "cache"
  for i, (flag, message) in enumerate(_bad_inputs(tmp_path)):
    module = "treadle.train.main" if i == 0 else "treadle.train.prepare"
    extra = ["--workdir", tmp_path / "run"] if i == 0 else []
    proc = run_cli(module, *TINY, flag, f"--config.data.cache_dir={cache}", *extra, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert re.search(message, lines[0]) and lines[0].startswith("error: "), lines[0]
    assert not cache.exists() and not (tmp_path / "run").exists()


def test_resume_is_bitwise_exact_with_a_mixture_and_packing(tmp_path, mixture):
  common = [*TINY, mixture, "--config.data.packing=True", "--config.model.dropout=0.1",
            f"--config.data.cache_dir={tmp_path / 'cache'}"]
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  run_cli("treadle.train.main", *common, "--workdir", straight, f"--config.train.num_steps={2 * N}")
  run_cli("treadle.train.main", *common, "--workdir", resumed, f"--config.train.num_steps={N}")
  out = run_cli("treadle.train.main", *common, "--workdir", resumed,
                f"--config.train.num_steps={2 * N}")
  assert f"resumed from step {N}" in out.stderr
  _assert_same_run(straight, resumed)  # losses of steps N+1..2N and final params
