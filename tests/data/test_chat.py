"""Chat templates rendered as transformers renders them (the HF leg compares with transformers
itself: tests/hf/test_chat_parity.py): special tokens from tokenizer_config.json,
raise_exception, add_generation_prompt, HF's tojson, and the rest of its environment."""
import datetime

import pytest
import tokenizers as hf
from tokenizers import models as hf_models

from treadle.data import chat
from treadle.data import tokenizers

USER = [{"role": "user", "content": "hi"}]
# Mistral's check, as its template words it
ALTERNATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
             "{{ raise_exception('Conversation roles must alternate user/assistant/user/"
             "assistant/...') }}{% endif %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")


def _hf_tokenizer(config: dict, template) -> tokenizers.HfTokenizer:
  vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "<|eot|>": 3, "hi": 4}
  tok = hf.Tokenizer(hf_models.WordLevel(vocab, unk_token="<unk>"))
  return tokenizers.HfTokenizer(tok, 8, config, template)


def test_treadle_tokenizers_have_no_template_and_a_set_one_renders_the_roles():
  tokenizer = tokenizers.CharTokenizer("abc")
  assert chat.render(tokenizer, USER) is None
  tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                             "{% if add_generation_prompt %}<assistant>{% endif %}")
  assert chat.render(tokenizer, [{"role": "system", "content": "be brief"}, *USER]) == \
      "<system>be brief\n<user>hi\n<assistant>"


def test_special_tokens_come_from_tokenizer_config_as_strings_or_added_tokens():
  config = {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False},
            "eos_token": "</s>", "unk_token": {"content": "<unk>"}, "pad_token": None,
            "add_bos_token": True, "image_token": "<img>",
            "extra_special_tokens": {"audio_token": "<aud>"}}
  template = ("{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token is defined }}|"
              "{{ image_token }}|{{ audio_token }}|{{ add_bos_token is defined }}")
  assert chat.render(_hf_tokenizer(config, template), USER) == \
      "<s>|</s>|<unk>|False|<img>|<aud>|False"
  assert chat.special_tokens(config) == {"bos_token": "<s>", "eos_token": "</s>",
                                         "unk_token": "<unk>", "image_token": "<img>",
                                         "audio_token": "<aud>"}


def test_llama_prompt_starts_with_the_bos_token():
  # Llama 2's template: `{{ bos_token + '[INST] ' ... }}`; the tokenizer object has no bos_token
  template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + "
              "m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}"
              "{% endif %}{% endfor %}")
  tok = _hf_tokenizer({"bos_token": "<s>", "eos_token": "</s>"}, template)
  messages = [*USER, {"role": "assistant", "content": "yo"}, *USER]
  assert chat.render(tok, messages) == "<s>[INST] hi [/INST] yo </s><s>[INST] hi [/INST]"


def test_raise_exception_is_a_chat_template_error_with_the_templates_message():
  tok = _hf_tokenizer({}, ALTERNATE)
  assert chat.render(tok, [*USER, {"role": "assistant", "content": "yo"}]) == \
      "[user]hi[assistant]yo"
  with pytest.raises(chat.ChatTemplateError) as e:
    chat.render(tok, [*USER, *USER])
  assert str(e.value) == "Conversation roles must alternate user/assistant/user/assistant/..."
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("template,message", [
    ("{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}", "TypeError"),
    ("{% for m in messages %}{{ m.content.nope() }}{% endfor %}", "UndefinedError"),
    ("{% set ns = namespace(_x=1) %}", "underscore-prefixed"),  # HF's namespace hardening
    ("{% set x = messages.append(1) %}", "SecurityError"),       # messages are immutable
    ("{% for m in messages %}", "does not compile"),
])
def test_a_template_failing_on_the_messages_is_a_chat_template_error(template, message):
  with pytest.raises(chat.ChatTemplateError, match=message):
    chat.render(_hf_tokenizer({}, template), USER)


def test_add_generation_prompt():
  template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}<|assistant|>{% endif %}"
  tok = _hf_tokenizer({}, template)
  assert chat.render(tok, USER) == "hi<|assistant|>"  # the server's default
  assert chat.render(tok, USER, add_generation_prompt=False) == "hi"


def test_tojson_is_hfs_no_html_escaping_and_its_options():
  template = "{{ messages[0] | tojson }}\n{{ messages[0] | tojson(indent=2, sort_keys=True) }}"
  content = "<b>&'\"ü"
  out = chat.render(_hf_tokenizer({}, template), [{"role": "user", "content": content}])
  # Jinja's own filter would write \u003cb\u003e\u0026\u0027 and escape ü
  assert out == ('{"role": "user", "content": "<b>&\'\\"ü"}\n'
                 '{\n  "content": "<b>&\'\\"ü",\n  "role": "user"\n}')


def test_trim_lstrip_loop_controls_globals_and_the_generation_tag():
  template = ("{% for m in messages %}\n"
              "  {% if loop.index0 == 1 %}{% break %}{% endif %}\n"
              "  {% generation %}{{ m['content'] }}{% endgeneration %}\n"
              "{% endfor %}\n"
              "{% set d = dict(a=1) %}{{ d['a'] }}|{{ tools }}|{{ documents }}|"
              "{{ strftime_now('%Y') }}")
  out = chat.render(_hf_tokenizer({}, template), [*USER, {"role": "user", "content": "no"}])
  assert out == f"hi1|None|None|{datetime.datetime.now().year}"


def test_messages_as_hf_passes_them_null_keys_dropped_and_reasoning_aliased():
  template = ("{% for m in messages %}{{ 'name' in m }}/{{ m.get('thinking') }}/"
              "{{ m.get('reasoning_content') }};{% endfor %}")
  messages = [{"role": "user", "content": "hi", "name": None},
              {"role": "assistant", "content": "yo", "reasoning": "hmm"}]
  assert chat.render(_hf_tokenizer({}, template), messages) == "False/None/None;False/hmm/hmm;"
  assert messages[0] == {"role": "user", "content": "hi", "name": None}  # caller's untouched


def test_named_templates_use_the_default_one():
  named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]
  assert chat.render(_hf_tokenizer({}, named), USER) == "plain"
  assert chat.render(_hf_tokenizer({}, {"default": "plain"}), USER) == "plain"
  assert chat.render(_hf_tokenizer({}, [{"name": "tool_use", "template": "x"}]), USER) is None


def test_an_empty_chat_is_refused():
  with pytest.raises(chat.ChatTemplateError, match="at least one message"):
    chat.render(_hf_tokenizer({}, "x"), [])
