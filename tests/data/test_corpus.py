"""Corpora of many documents: held-out documents, BPE's bounded sample, mixtures drawn by
weight, packed windows with segment ids, per-process rows and exact resume."""
import json
import os

import numpy as np
import pytest

from treadle.data import corpus
from treadle.data import mixture
from treadle.data import windows
from treadle.train import config as config_lib


def _write(path, docs):
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
  return path


def _cfg(tmp_path, **kw):
  return config_lib.section("data", **{"seq_len": 16, "cache_dir": str(tmp_path / "cache"),
                                       "prepare_workers": 1, **kw})


def _documents(view: corpus.View) -> list[np.ndarray]:
  tokens, _ = view.read(np.arange(view.num_tokens))
  return np.split(tokens, view.cum[1:-1])


def test_val_and_test_are_whole_held_out_documents(tmp_path):
  docs = [f"document {i}: " + "abc" * (i % 7 + 1) for i in range(400)]
  data = corpus.load(_cfg(tmp_path, path=str(_write(tmp_path / "d.jsonl", docs)),
                          tokenizer="byte"))
  tok = data.tokenizer
  split_docs = [[tok.decode(d) for d in _documents(s.views[0])]
                for s in (data.train, data.val, data.test)]
  assert [len(d) for d in split_docs] == [360, 20, 20]  # 5% + 5% of 400 documents
  assert sorted(sum(split_docs, [])) == sorted(docs)  # every document once, none cut
  for part in _documents(data.val.views[0]):
    assert part[-1] == tok.eot_id and (part[:-1] != tok.eot_id).all()
  again = corpus.load(_cfg(tmp_path, path=str(tmp_path / "d.jsonl"), tokenizer="byte"))
  assert [tok.decode(d) for d in _documents(again.val.views[0])] == split_docs[1]  # fixed


def test_bpe_learns_from_a_bounded_sample_of_training_documents(tmp_path):
  docs = ["ab ba abba " * 20] * 200 + ["zq qz zqzq " * 20] * 200
  path = _write(tmp_path / "d.jsonl", docs)
  data = corpus.load(_cfg(tmp_path, path=str(path), tokenizer="bpe", vocab_size=300,
                          tokenizer_sample_bytes=20_000))
  vocab = data.tokenizer.to_json()["hf"]["model"]["vocab"]
  # ~90 documents of 220 characters fit the budget: all from the first half
  assert "ab" in vocab and not any("z" in t or "q" in t for t in vocab if len(t) > 1)
  record = json.loads(next((tmp_path / "cache" / "tokenizers").iterdir()).read_text())
  end = record["sample_ends"][0]  # the documents BPE read: index < end and u >= threshold
  assert 80 < end < 200
  index = np.arange(400)
  sampled = (index < end) & (corpus._uniform(index) >= corpus._threshold(_cfg(tmp_path)))
  held_out = ~np.isin(index, _doc_indices(data))
  assert held_out.sum() == 40 and not (held_out & sampled).any()


def _doc_indices(data: corpus.Corpus) -> np.ndarray:
  """Indices of the training documents (by their start in the store)."""
  store = data.train.views[0].store
  return np.searchsorted(store.doc_starts, data.train.views[0].starts)


def _mixture_data(tmp_path, weights=(0.7, 0.3)):
  _write(tmp_path / "a.jsonl", ["a" * (50 + i) for i in range(100)])
  _write(tmp_path / "b.jsonl", ["b" * (50 + i) for i in range(100)])
  spec = f"web={tmp_path / 'a.jsonl'}:{weights[0]},books={tmp_path / 'b.jsonl'}:{weights[1]}"
  return corpus.load(_cfg(tmp_path, mixture=spec, tokenizer="char"))


def test_mixture_proportions_are_within_three_sigma(tmp_path):
  data = _mixture_data(tmp_path)
  assert data.train.names == ("web", "books") and data.train.weights == (0.7, 0.3)
  a = data.tokenizer.encode("a")[0]
  it = windows.train_iterator(data.train, 16, 32, seed=5, packed=False)
  # a window of source web holds a's (and ends of text), never b's
  rows = np.concatenate([(next(it)["inputs"] == a).any(axis=1) for _ in range(200)])
  share = np.mean(rows)  # over 6400 examples
  sigma = np.sqrt(0.7 * 0.3 / len(rows))
  assert abs(share - 0.7) < 3 * sigma, (share, sigma)
  assert abs(mixture.realised((0.7, 0.3), 5, 6400)[0] - share) < 1e-12  # what the log says
  assert 0.2 < mixture.realised((0.5, 0.5), 5, 1000)[0] < 0.8
  first = windows.train_iterator(data.train, 16, 32, seed=5, packed=False)
  other = windows.train_iterator(data.train, 16, 32, seed=6, packed=False)
  assert not np.array_equal(next(other)["inputs"], next(first)["inputs"])


def test_packed_rows_carry_segments_positions_and_a_loss_mask(tmp_path):
  docs = [f"d{i}" + "x" * (i % 9) for i in range(300)]
  data = corpus.load(_cfg(tmp_path, path=str(_write(tmp_path / "d.jsonl", docs)),
                          tokenizer="char", seq_len=16))
  eot = data.tokenizer.eot_id
  batch = windows.train_iterator(data.train, 16, 8, seed=0, packed=True).__next__()
  for inputs, targets, seg, pos, mask in zip(*(batch[k] for k in (
      "inputs", "targets", "segment_ids", "positions", "loss_mask"))):
    after_eot = np.concatenate([[False], inputs[:-1] == eot])
    np.testing.assert_array_equal(np.diff(seg), after_eot[1:])  # a new segment after each EOT
    assert seg[0] == 1 and (pos[after_eot] == 0).all()
    np.testing.assert_array_equal(np.diff(pos)[~after_eot[1:]], 1)
    np.testing.assert_array_equal(mask, inputs != eot)  # never predict across a boundary
    np.testing.assert_array_equal(inputs[1:], targets[:-1])
  view = data.train.views[0]
  starts = batch["inputs"][:, 0]
  assert len(set(starts.tolist())) > 1
  rows = windows.num_examples(view, 16, True)
  assert rows == (view.num_tokens - 1) // 16


def test_two_processes_read_disjoint_rows(tmp_path, monkeypatch):
  data = _mixture_data(tmp_path)
  whole = windows.BatchSource(data.train, 16, 8, 3, True)[7]
  read = []
  for store in {id(v.store): v.store for v in data.train.views}.values():
    original = store.read
    monkeypatch.setattr(store, "read", lambda p, original=original: read.append(p.size)
                        or original(p))
  parts = [windows.BatchSource(data.train, 16, 8, 3, True, i, 2)[7] for i in range(2)]
  for k in whole:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
  assert sum(read) == 8 * 17  # each process read its 4 rows of 17 tokens, nothing more


@pytest.mark.parametrize("packed", [False, True])
def test_resume_is_exact_with_a_mixture(tmp_path, packed):
  data = _mixture_data(tmp_path)
  a = windows.train_iterator(data.train, 16, 4, seed=3, packed=packed)
  for _ in range(5):
    next(a)
  state = a.get_state()
  rest = [next(a) for _ in range(5)]
  b = windows.train_iterator(data.train, 16, 4, seed=3, packed=packed)
  b.set_state(state)
  for x, y in zip(rest, [next(b) for _ in range(5)]):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_a_rewrite_of_the_same_size_and_mtime_fits_a_new_tokenizer(tmp_path):
  """The issue's failure: the char tokenizer cached for the old text lacked the new text's
  characters, so sampling failed on 'x'. The tokenizer's cache key is the content too."""
  path = _write(tmp_path / "d.jsonl", ["abc abc abc " * 20] * 40)
  first = corpus.load(_cfg(tmp_path, path=str(path), tokenizer="char"))
  stat = path.stat()
  _write(path, ["xyz xyz xyz " * 20] * 40)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert path.stat().st_size == stat.st_size
  again = corpus.load(_cfg(tmp_path, path=str(path), tokenizer="char"))
  assert "x" not in first.tokenizer.decode(list(range(first.tokenizer.vocab_size - 1)))
  tokens, _ = again.train.views[0].read(np.arange(12))
  assert again.tokenizer.decode(tokens) == "xyz xyz xyz "
