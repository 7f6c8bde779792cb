"""Tokenizers: round trips, unknown characters, persistence in the workdir."""
import json
import random

import numpy as np
import pytest

from treadle.data import corpus as corpus_lib
from treadle.data import tokenizers
from treadle.train import config as config_lib
from tests.conftest import run_cli

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak!"


def test_char_round_trip_and_vocab():
  tok = tokenizers.fit("char", TEXT)
  ids = tok.encode(TEXT)
  assert ids.dtype == np.int32 and ids.max() < tok.vocab_size - 1 == len(set(TEXT))
  assert tok.eot_id == len(set(TEXT)) and tok.decode(ids) == TEXT
  assert tok.decode(np.append(ids, tok.eot_id)) == TEXT  # end of text decodes to nothing


def test_byte_round_trip_including_non_ascii():
  tok = tokenizers.fit("byte", TEXT)
  text = "Ça va? — naïve café ☕"
  assert tok.vocab_size == 257 and tok.eot_id == 256
  assert tok.decode(tok.encode(text)) == text
  assert len(tok.encode(text)) > len(text)  # multi-byte characters


def test_unknown_character_is_a_clear_error():
  tok = tokenizers.fit("char", TEXT)
  with pytest.raises(tokenizers.UnknownCharacterError, match="'€'"):
    tok.encode("Speak €")


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_save_and_load(tmp_path, kind):
  tok = tokenizers.fit(kind, TEXT)
  tokenizers.save(tok, tmp_path)
  loaded = tokenizers.load(tmp_path)
  assert loaded.to_json() == tok.to_json()
  np.testing.assert_array_equal(loaded.encode(TEXT), tok.encode(TEXT))


def test_unknown_kind():
  with pytest.raises(ValueError, match="data.tokenizer"):
    tokenizers.fit("bpe-nope", TEXT)


# -- byte-level BPE (HuggingFace `tokenizers`) -------------------------------------------

TRICKY = ["  leading spaces", "\n\nnewlines\n\n", "café — naïve", "emoji 🎉🙂 and 日本語",
          "\ttabs\r\nCRLF\r\n", " ", "", "trailing   ", "x\n  y", "\x00\x1f\x7f controls",
          "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"]


@pytest.fixture(scope="module")
def corpus(text_file) -> str:
  return text_file.read_text()[:30000]


@pytest.fixture(scope="module")
def bpe(corpus) -> tokenizers.BpeTokenizer:
  return tokenizers.fit("bpe", corpus, vocab_size=300)


@pytest.mark.parametrize("vocab_size", [300, 400])
def test_bpe_vocab_size_comes_from_the_argument(corpus, vocab_size):
  tok = tokenizers.fit("bpe", corpus, vocab_size)
  assert isinstance(tok, tokenizers.BpeTokenizer) and tok.kind == "bpe"
  assert tok.vocab_size == vocab_size == len(tok.to_json()["hf"]["model"]["vocab"])
  ids = tok.encode(corpus)
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() == vocab_size - 1
  assert len(ids) < 0.8 * len(corpus.encode("utf-8"))  # merges really compress the bytes


def test_bpe_on_a_tiny_text_reports_the_vocab_it_reached():
  tok = tokenizers.fit("bpe", "abab abab", vocab_size=1000)
  assert 256 < tok.vocab_size < 1000  # 256 bytes + the few merges the text allows
  assert tok.vocab_size == len(tok.to_json()["hf"]["model"]["vocab"])


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trip_is_exact_on_unseen_text(bpe, text):
  ids = bpe.encode(text)
  assert ids.dtype == np.int32 and len(ids) <= len(text.encode("utf-8"))
  assert bpe.decode(ids) == text
  assert bpe.decode(list(ids)) == text


def test_bpe_round_trips_the_corpus_and_ignores_out_of_range_ids(bpe, corpus):
  ids = bpe.encode(corpus)
  assert bpe.decode(ids) == corpus
  assert bpe.decode(np.concatenate([[-1, bpe.vocab_size], ids[:5]])) == bpe.decode(ids[:5])


def test_bpe_parallel_pieces_encode_like_one_call(bpe, corpus):
  pieces = tokenizers._pieces(corpus, piece_chars=1000)
  assert len(pieces) > 10 and "".join(pieces) == corpus
  np.testing.assert_array_equal(bpe.encode(corpus), bpe._hf.encode(corpus).ids)
  # whitespace runs around the cuts, and a vocabulary whose merges span them
  rng = random.Random(0)
  text = "".join(rng.choice([" ", "  ", "\n", "\t", "ab", "c", "!", "é"]) for _ in range(3000))
  tok = tokenizers.fit("bpe", text, 400)
  for piece_chars in (1, 7, 100):
    ids = np.concatenate([tok._hf.encode(p).ids for p in tokenizers._pieces(text, piece_chars)])
    np.testing.assert_array_equal(ids, tok._hf.encode(text).ids)


def test_bpe_fit_is_deterministic(corpus, bpe):
  # every process of a multi-host run fits its own tokenizer: they must agree
  assert tokenizers.fit("bpe", corpus, 300).to_json() == bpe.to_json()


def test_bpe_save_and_load(tmp_path, bpe):
  path = tokenizers.save(bpe, tmp_path)
  assert path.name == "tokenizer.json" and '"kind": "bpe"' in path.read_text()
  loaded = tokenizers.load(tmp_path)
  assert isinstance(loaded, tokenizers.BpeTokenizer) and loaded.vocab_size == bpe.vocab_size
  assert loaded.to_json() == bpe.to_json()
  for text in [TEXT, *TRICKY]:
    np.testing.assert_array_equal(loaded.encode(text), bpe.encode(text))
    assert loaded.decode(loaded.encode(text)) == text


@pytest.mark.parametrize("vocab_size", [0, 100, 256])
def test_bpe_vocab_size_too_small(vocab_size):
  with pytest.raises(ValueError, match=f"data.vocab_size={vocab_size} must be > 256"):
    tokenizers.fit("bpe", TEXT, vocab_size)


def test_bpe_data_config_checks():
  with pytest.raises(ValueError, match="data.vocab_size=0 must be > 256"):
    config_lib.section("data", tokenizer="bpe")
  with pytest.raises(ValueError, match="data.vocab_size=-1 must be >= 0"):
    config_lib.section("data", vocab_size=-1)
  with pytest.raises(ValueError, match=r"data.tokenizer='bpe2' is not one of \['bpe'"):
    config_lib.section("data", tokenizer="bpe2", vocab_size=300)
  assert config_lib.section("data", tokenizer="byte").vocab_size == 0  # ignored by char/byte
  assert config_lib.section("data", tokenizer="bpe", vocab_size=300).vocab_size == 300


def test_unknown_kind_in_a_saved_file(tmp_path):
  (tmp_path / tokenizers.FILENAME).write_text('{"kind": "bpee"}')
  with pytest.raises(ValueError, match="'bpee'"):
    tokenizers.load(tmp_path)


def test_bpe_learns_from_the_train_split_only(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("ab ba ab\n" * 900 + "zq qz zq\n" * 100)  # zq, qz only in the tail splits
  cfg = config_lib.section("data", path=str(path), tokenizer="bpe", vocab_size=300, seq_len=8,
                           cache_dir=str(tmp_path / "cache"), prepare_workers=1)
  data = corpus_lib.load(cfg)
  tok = data.tokenizer
  vocab = tok.to_json()["hf"]["model"]["vocab"]
  assert "ab" in vocab and not any("z" in t or "q" in t for t in vocab if len(t) > 1)
  tokens = [v.read(np.arange(v.num_tokens))[0] for s in (data.train, data.val, data.test)
            for v in s.views]
  assert tok.decode(np.concatenate(tokens)) == path.read_text()


def test_bpe_trains_and_samples_end_to_end(tmp_path, text_file):
  workdir = tmp_path / "run"
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", "--config.data.tokenizer=bpe",
          "--config.data.vocab_size=300", "--config.train.num_steps=4",
          "--config.train.eval_every=4", "--config.train.checkpoint_every=4")
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["vocab_size"] == 300 and config["model"]["vocab_size"] == 300
  assert tokenizers.load(workdir).kind == "bpe"
  proc = run_cli("treadle.infer.cli", "--workdir", workdir, "--prompt", "ROMEO: café",
                 "--max_new_tokens", "40", "--seed", "3")
  assert proc.stdout.startswith("ROMEO: café") and len(proc.stdout) > 40
  from treadle.infer import sampler as sampler_lib  # local: the other tests here need no jax
  sampler = sampler_lib.Sampler.from_workdir(workdir)
  for seed in range(2):
    # hot, nearly untrained: many multi-byte characters split across tokens and pieces
    kw = dict(max_new_tokens=40, temperature=1.5, seed=seed)
    whole = sampler.generate("ROMEO: café", **kw)[0].text
    assert "".join(sampler.stream("ROMEO: café", chunk_tokens=1, **kw)) == whole


def test_stop_token_ids_of_treadle_tokenizers_are_their_end_of_text():
  assert tokenizers.stop_token_ids(tokenizers.CharTokenizer("ab")) == [2]
  assert tokenizers.stop_token_ids(tokenizers.CharTokenizer("ab", eot=False)) == []
  assert tokenizers.stop_token_ids(tokenizers.ByteTokenizer()) == [256]
  assert tokenizers.stop_token_ids(tokenizers.ByteTokenizer(eot=False)) == []
  bpe = tokenizers.fit("bpe", TEXT * 4, 300)
  assert tokenizers.stop_token_ids(bpe) == [bpe.eot_id] and bpe.eot_id is not None


@pytest.mark.parametrize("eos_token", ["<|eot_id|>", {"__type": "AddedToken",
                                                      "content": "<|eot_id|>"}])
def test_stop_token_ids_of_an_imported_model_join_every_source(eos_token):
  import tokenizers as hf
  from tokenizers import models as hf_models
  vocab = {"<|begin|>": 0, "<|end_of_text|>": 1, "<|eom_id|>": 2, "<|eot_id|>": 3, "a": 4}
  hf_tok = hf.Tokenizer(hf_models.WordLevel(vocab, unk_token="a"))
  tok = tokenizers.HfTokenizer(
      hf_tok, 8, {"eos_token": eos_token}, None,
      {"bos_token_id": 0, "eos_token_id": 1, "generation_eos_token_id": [2, 1]})
  # config.json's eos, generation_config.json's list, tokenizer_config's end-of-turn token
  assert tokenizers.stop_token_ids(tok) == [1, 2, 3]
  tok.token_ids.update(eos_token_id=[3, 1], generation_eos_token_id=None)
  assert tokenizers.stop_token_ids(tok) == [1, 3]
  tok.tokenizer_config = {"eos_token": "<|not in the vocabulary|>"}
  tok.token_ids = {}
  assert tokenizers.stop_token_ids(tok) == []
