"""Tiny Qwen2-style (ChatML) and Llama-3-style chat tokenizers as transformers saves them:
a byte-level BPE trained on local text, the family's special tokens first and its real chat
template (needs transformers: callers skip without it)."""
import json
import pathlib

import pytest

from tests.hf import synthetic

QWEN2_TEMPLATE = (  # Qwen2-7B-Instruct's
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = (  # Meta-Llama-3-8B-Instruct's: the bos_token comes from the config
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")

# special tokens get the first ids, in this order; end_of_turn is what the template closes
# each message with
FAMILIES = {
    "qwen2": dict(
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], template=QWEN2_TEMPLATE,
        tokens=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
        # as Qwen2.5-Instruct's file lists them: transformers' Qwen2Tokenizer would otherwise
        # fill unk_token with its class default, which treadle does not know
        listed=dict(bos_token=None, unk_token=None), end_of_turn="<|im_end|>"),
    "llama3": dict(
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"], template=LLAMA3_TEMPLATE,
        tokens=dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"), listed={},
        end_of_turn="<|eot_id|>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is two and two?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is two and two?"},
     {"role": "assistant", "content": "Four."},
     {"role": "user", "content": "  And ünïcödé ✓ with spaces?  \n"}],
    [{"role": "user", "content": "quote <|im_end|> and <|eot_id|> inside, then\n\nlines"}],
]


def train(specials: list[str], text: str):
  """A byte-level BPE trained on local text whose first ids are `specials`."""
  import tokenizers as hf
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = hf.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=synthetic.VOCAB - 10, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=specials)
  tok.train_from_iterator([text[:200_000]], trainer)
  return tok


def save(family: str, hf_dir: pathlib.Path, text: str) -> None:
  """Writes `family`'s chat tokenizer into `hf_dir` (replacing any tokenizer files there)."""
  transformers = pytest.importorskip("transformers")
  f = FAMILIES[family]
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=train(f["specials"], text),
                                              **f["tokens"])
  fast.chat_template = f["template"]
  fast.save_pretrained(hf_dir)
  config_path = hf_dir / "tokenizer_config.json"
  config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **f["listed"]}))
