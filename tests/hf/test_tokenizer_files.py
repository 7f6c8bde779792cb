"""Exported tokenizers: char, byte and BPE runs' tokenizers as tokenizer.json give the same
ids and text in HF `tokenizers` (and in transformers' AutoTokenizer where installed)."""
import json

import numpy as np
import pytest
import tokenizers as hf

from tests.hf import synthetic
from treadle.data import tokenizers
from treadle.hf import tokenizer_files

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n  It is the east: ü ✓\n"


def _treadle_tokenizers(text: str) -> dict:
  tok_hf = hf.Tokenizer.from_str(synthetic.train_tokenizer(text).to_str())
  return {"char": tokenizers.fit("char", text + TEXT), "byte": tokenizers.fit("byte", text),
          "bpe": tokenizers.fit("bpe", text[:100_000], 400),
          "hf": tokenizers.HfTokenizer(tok_hf, 304, {"eos_token": "<|eos|>"},
                                       synthetic.CHAT_TEMPLATE)}


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "hf"])
def test_exported_tokenizer_encodes_and_decodes_the_same(tmp_path, text_file, kind):
  tok = _treadle_tokenizers(text_file.read_text())[kind]
  tokenizer_files.save(tok, tmp_path, max_length=128)
  loaded = hf.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  ids = tok.encode(TEXT)
  assert len(ids) > 10
  assert loaded.encode(TEXT, add_special_tokens=False).ids == ids.tolist()
  assert loaded.decode(ids.tolist()) == TEXT
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert config["model_max_length"] == 128 and "chat_template" not in config
  assert (tmp_path / "chat_template.jinja").exists() == (kind == "hf")
  transformers = pytest.importorskip("transformers")
  auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert auto(TEXT, add_special_tokens=False)["input_ids"] == ids.tolist()
  assert auto.decode(ids) == TEXT
  if kind == "hf":
    assert auto.eos_token == "<|eos|>"
    chat = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|user|>hi"


def test_hf_tokenizer_kind_round_trips_through_the_run_directory(tmp_path, text_file):
  tok = _treadle_tokenizers(text_file.read_text())["hf"]
  tok.token_ids["eos_token_id"] = 1
  tokenizers.save(tok, tmp_path)
  back = tokenizers.load(tmp_path)
  assert back.kind == "hf" and back.vocab_size == 304 and back.chat_template == tok.chat_template
  assert back.token_ids == {"eos_token_id": 1}
  np.testing.assert_array_equal(back.encode(TEXT), tok.encode(TEXT))
  with pytest.raises(ValueError, match="inherited|init_from"):
    tokenizers.fit("hf", TEXT)
