"""Tokenizer files: a HF model directory's tokenizer -> treadle's `hf` tokenizer kind, and
any treadle tokenizer -> tokenizer.json + tokenizer_config.json that transformers'
PreTrainedTokenizerFast loads (char: one token per character; byte: 256 byte tokens)."""
import json
import pathlib

import tokenizers as hf
from tokenizers import decoders as hf_decoders
from tokenizers import models as hf_models
from tokenizers import pre_tokenizers as hf_pre_tokenizers

from treadle.data import tokenizers
from treadle.hf import config_fields
from treadle.hf import dir_files
from treadle.hf.config_fields import HfFormatError

CONFIG = "tokenizer_config.json"
TEMPLATE = "chat_template.jinja"


def _special_token(config: config_fields.Fields, key: str) -> None:
  """bos_token/eos_token: a string, or an AddedToken object {"content": "...", ...}."""
  value = config.body.get(key)
  if isinstance(value, dict):
    config.mapping(key).string("content")
  elif value is not None and not isinstance(value, str):
    raise config.error(key, f" must be a string or an object with a 'content' string, got "
                       f"{config_fields.shown(value)}")


def _chat_template(config: config_fields.Fields) -> str | None:
  """The template source: a string, or from HF's list of named templates
  ([{"name": ..., "template": ...}]) the one named "default"."""
  value = config.body.get("chat_template")
  if not isinstance(value, list):
    return config.string("chat_template", None)
  named = {}
  for i, item in enumerate(value):
    entry = config_fields.Fields(item, config.source, f"chat_template[{i}].")
    named[entry.string("name")] = entry.string("template")
  if "default" not in named:
    raise config.error("chat_template", f" has no template named 'default' (named: "
                       f"{config_fields.shown(sorted(named))}); treadle uses the default one")
  return named["default"]


def _config(hf_dir: pathlib.Path) -> tuple[dict, str | None]:
  """tokenizer_config.json's body (checked where treadle reads it) and its chat template."""
  path = dir_files.path(hf_dir, CONFIG, CONFIG)
  if not path.exists():
    return {}, None
  config = config_fields.Fields(dir_files.read_object(path), CONFIG)
  for key in ("bos_token", "eos_token"):
    _special_token(config, key)
  return config.body, _chat_template(config)


def load(hf_dir: pathlib.Path, vocab_size: int) -> tokenizers.HfTokenizer:
  """tokenizer.json (required), tokenizer_config.json and the chat template (optional)."""
  path = dir_files.path(hf_dir, tokenizers.FILENAME, tokenizers.FILENAME)
  if not path.exists():
    raise HfFormatError(f"no {tokenizers.FILENAME} in {str(hf_dir)!r} (save the tokenizer with "
                        "transformers' AutoTokenizer.save_pretrained to write one)")
  try:
    tok = hf.Tokenizer.from_file(str(path))
  except Exception as e:  # the Rust side raises its own exception type
    raise HfFormatError(f"{str(path)!r} is not a tokenizers file ({str(e).splitlines()[0]})"
                        ) from None
  if tok.get_vocab_size(with_added_tokens=True) > vocab_size:
    raise HfFormatError(f"{tokenizers.FILENAME} has {tok.get_vocab_size(True)} tokens, more "
                        f"than config.json's vocab_size={vocab_size}")
  config, template = _config(hf_dir)
  template_path = dir_files.path(hf_dir, TEMPLATE, TEMPLATE)
  if template_path.exists():
    template = dir_files.read_text(template_path)
  return tokenizers.HfTokenizer(tok, vocab_size, config, template)


def _char_tokenizer(chars: str) -> hf.Tokenizer:
  tok = hf.Tokenizer(hf_models.WordLevel({c: i for i, c in enumerate(chars)},
                                         unk_token=chars[0]))
  # one pre-token per character (newlines included), glued back without spaces on decode
  tok.pre_tokenizer = hf_pre_tokenizers.Split(hf.Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = hf_decoders.Fuse()
  return tok


def _byte_tokenizer() -> hf.Tokenizer:
  # byte-level BPE without merges: GPT-2's byte->symbol alphabet, symbol of byte b has id b
  alphabet = _bytes_to_symbols()
  tok = hf.Tokenizer(hf_models.BPE({alphabet[b]: b for b in range(256)}, []))
  tok.pre_tokenizer = hf_pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = hf_decoders.ByteLevel()
  return tok


def _bytes_to_symbols() -> dict[int, str]:
  """GPT-2's reversible map of the 256 bytes onto printable unicode characters."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  symbols, extra = {}, 0
  for b in range(256):
    if b in printable:
      symbols[b] = chr(b)
    else:
      symbols[b] = chr(256 + extra)
      extra += 1
  return symbols


def hf_tokenizer(tok) -> tuple[hf.Tokenizer, dict, str | None]:
  """(tokenizers.Tokenizer, tokenizer_config.json body, chat template) of any treadle kind."""
  base = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
  if tok.kind == "hf":  # the imported model's own settings, as they were
    return tok.hf_tokenizer, {**base, **tok.tokenizer_config}, tok.chat_template
  if tok.kind == "char":
    return _char_tokenizer(tok.chars), base, None
  if tok.kind == "byte":
    return _byte_tokenizer(), base, None
  if tok.kind == "bpe":
    return hf.Tokenizer.from_str(json.dumps(tok.to_json()["hf"])), base, None
  raise HfFormatError(f"tokenizer kind {tok.kind!r} cannot be exported")


def save(tok, out_dir: pathlib.Path, max_length: int) -> None:
  hf_tok, config, template = hf_tokenizer(tok)
  hf_tok.save(str(out_dir / tokenizers.FILENAME))
  config = {"model_max_length": max_length, **config}
  config.pop("chat_template", None)  # written as chat_template.jinja, as transformers 5 does
  if template:
    (out_dir / TEMPLATE).write_text(template)
  (out_dir / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False))
