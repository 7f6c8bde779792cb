"""Text data: contiguous splits of one document, errors naming the file, Grain windows and
exact resume."""
import numpy as np
import pytest

from treadle.data import corpus
from treadle.data import text
from treadle.data import tokenizers
from treadle.train import config as config_lib


def _cfg(path, tmp_path, **kw):
  return config_lib.section("data", path=str(path), seq_len=8, cache_dir=str(tmp_path / "cache"),
                            prepare_workers=1, **kw)


def _tokens(split: corpus.Split) -> np.ndarray:
  (view,) = split.views
  return view.read(np.arange(view.num_tokens))[0]


def test_split_sizes_and_no_overlap(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("".join(chr(97 + i % 26) for i in range(10_000)))
  data = corpus.load(_cfg(path, tmp_path, val_fraction=0.1, test_fraction=0.05))
  parts = [_tokens(s) for s in (data.train, data.val, data.test)]
  assert [len(p) for p in parts] == [8500, 1000, 500]
  # contiguous and disjoint; the end-of-text token of the one document is left out
  np.testing.assert_array_equal(np.concatenate(parts), data.tokenizer.encode(path.read_text()))


def test_missing_empty_and_short_files_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    corpus.load(_cfg(tmp_path / "nope.txt", tmp_path))
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty.txt.*empty"):
    corpus.load(_cfg(empty, tmp_path))
  short = tmp_path / "short.txt"
  short.write_text("x" * 100)
  with pytest.raises(ValueError, match="short.txt.*too short"):
    corpus.load(_cfg(short, tmp_path))


def test_windows_are_shifted_targets_from_the_split():
  tokens = np.arange(1000, dtype=np.int32)
  it = text.train_iterator(tokens, seq_len=16, global_batch=4, seed=0)
  batch = next(it)
  assert batch["inputs"].shape == (4, 16)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  np.testing.assert_array_equal(batch["targets"] - batch["inputs"], 1)  # contiguous windows


def test_seeded_and_resumes_exactly():
  tokens = np.arange(5000, dtype=np.int32)
  a = text.train_iterator(tokens, 16, 4, seed=3)
  first = [next(a)["inputs"] for _ in range(5)]
  state = a.get_state()
  rest = [next(a)["inputs"] for _ in range(5)]
  b = text.train_iterator(tokens, 16, 4, seed=3)
  b.set_state(state)
  for x, y in zip(rest, [next(b)["inputs"] for _ in range(5)]):
    np.testing.assert_array_equal(x, y)
  c = text.train_iterator(tokens, 16, 4, seed=4)
  assert not np.array_equal(first[0], next(c)["inputs"])


def test_processes_read_disjoint_rows_of_the_same_global_batch():
  tokens = np.arange(5000, dtype=np.int32)
  whole = next(text.train_iterator(tokens, 16, 8, seed=1))["inputs"]
  parts = [next(text.train_iterator(tokens, 16, 8, seed=1, process_index=i,
                                    process_count=2))["inputs"] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_char_tokenizer_covers_val_and_test(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("a" * 5000 + "zq" * 300)  # z, q only in the tail splits
  tok = corpus.load(_cfg(path, tmp_path)).tokenizer
  assert isinstance(tok, tokenizers.CharTokenizer) and tok.vocab_size == 3 + 1  # + end of text


def test_whole_split_evaluation_covers_consecutive_windows():
  tokens = np.arange(1000, dtype=np.int32)
  batches = text.fixed_batches(tokens, seq_len=10, global_batch=8, num_batches=0)
  assert len(batches) == 99 // 8  # 99 full windows, 12 full batches
  starts = np.concatenate([b["inputs"][:, 0] for b in batches])
  np.testing.assert_array_equal(starts, np.arange(0, 960, 10))
  halves = [text.fixed_batches(tokens, 10, 8, 0, process_index=i, process_count=2)[3]["inputs"]
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), batches[3]["inputs"])
  tiny = text.fixed_batches(np.arange(30, dtype=np.int32), 10, 8, 0)
  assert len(tiny) == 1 and tiny[0]["inputs"].shape == (8, 10)  # wraps to fill one batch
