"""Tokenizers: round trips, unknown characters, persistence in the workdir."""
import numpy as np
import pytest

from data import tokenizers

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak!"


def test_char_round_trip_and_vocab():
  tok = tokenizers.fit("char", TEXT)
  ids = tok.encode(TEXT)
  assert ids.dtype == np.int32 and ids.max() < tok.vocab_size == len(set(TEXT))
  assert tok.decode(ids) == TEXT


def test_byte_round_trip_including_non_ascii():
  tok = tokenizers.fit("byte", TEXT)
  text = "Ça va? — naïve café ☕"
  assert tok.vocab_size == 256
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
