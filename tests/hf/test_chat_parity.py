"""Chat prompts of imported models equal transformers' `apply_chat_template`, token for token,
for tiny Qwen2-style (ChatML) and Llama-3-style chat tokenizers, and the model's stop ids
include its end-of-turn token and generation_config.json's ids. Needs transformers."""
import json

import pytest

transformers = pytest.importorskip("transformers")

from tests.conftest import run_cli  # noqa: E402
from tests.hf import chat_tokenizers  # noqa: E402
from tests.hf import synthetic  # noqa: E402
from treadle.data import chat  # noqa: E402
from treadle.data import tokenizers  # noqa: E402

# each family's model config and ids, as the chat tokenizer in chat_tokenizers numbers them
FAMILIES = {
    "qwen2": dict(
        config={**synthetic.LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2", "bos_token_id": None, "eos_token_id": 0},
        generation_eos=[2, 0], stop_ids=[0, 2]),
    "llama3": dict(
        config={**synthetic.LLAMA_CONFIG, "bos_token_id": 0, "eos_token_id": 1},
        # <|eot_id|> (5) is only tokenizer_config's eos_token: the chat's end of turn
        generation_eos=[1, 4], stop_ids=[1, 4, 5]),
}
CONVERSATIONS = chat_tokenizers.CONVERSATIONS


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, text_file):
  """(name, transformers' tokenizer, treadle's tokenizer from treadle-import-hf's run)."""
  f = FAMILIES[request.param]
  root = tmp_path_factory.mktemp(request.param)
  hf_dir = synthetic.write(root / "hf", f["config"], text_file.read_text())
  chat_tokenizers.save(request.param, hf_dir, text_file.read_text())  # replaces synthetic's
  (hf_dir / "generation_config.json").write_text(json.dumps(
      {"eos_token_id": f["generation_eos"], "bos_token_id": f["config"]["bos_token_id"]}))
  run_cli("treadle.hf.import_cli", "--hf_dir", hf_dir, "--workdir", root / "run")
  auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
  return request.param, auto, tokenizers.load(root / "run"), hf_dir


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_prompt_ids_equal_apply_chat_template(family, messages):
  name, auto, ours, _ = family
  expected = auto.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
  text = chat.render(ours, messages)
  assert text == auto.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert ours.encode(text).tolist() == expected, name
  special = {"qwen2": "<|im_start|>", "llama3": "<|begin_of_text|>"}[name]
  assert expected[0] == ours.hf_tokenizer.token_to_id(special)  # a special token, not text


def test_stop_ids_hold_the_end_of_turn_and_generation_configs_ids(family):
  name, auto, ours, hf_dir = family
  f = FAMILIES[name]
  generation = transformers.GenerationConfig.from_pretrained(hf_dir)
  assert ours.token_ids["generation_eos_token_id"] == generation.eos_token_id
  assert tokenizers.stop_token_ids(ours) == f["stop_ids"]
  assert auto.convert_tokens_to_ids(auto.eos_token) in f["stop_ids"]
  assert set(generation.eos_token_id) <= set(f["stop_ids"])


# Templates using each part of transformers' environment, compared with transformers itself
FEATURES = [
    "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2, sort_keys=True) }}",
    "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token is defined }}|"
    "{{ add_bos_token is defined }}",
    "{% for m in messages %}{{ 'name' in m }}/{{ m.get('thinking') }}/"
    "{{ m.get('reasoning_content') }};{% endfor %}",
    "{% set ns = namespace(n=0) %}{% for m in messages %}\n  {% if loop.index0 > 1 %}"
    "{% break %}{% endif %}\n  {% set ns.n = ns.n + 1 %}\n{% endfor %}\n{{ ns.n }}"
    "{{ dict(a=1) | tojson }}{{ tools }}{{ documents }}",
    "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    "{% if add_generation_prompt %}>{% endif %}",
]
MESSAGES = [{"role": "user", "content": "<b>&'ü", "name": None},
            {"role": "assistant", "content": "yo", "reasoning": "hmm"},
            {"role": "user", "content": "three"}]


@pytest.mark.parametrize("template", FEATURES)
def test_template_features_render_as_transformers(family, template):
  _, auto, ours, _ = family
  ours.chat_template = template
  try:
    assert chat.render(ours, MESSAGES) == auto.apply_chat_template(
        MESSAGES, chat_template=template, add_generation_prompt=True, tokenize=False)
  finally:
    ours.chat_template = chat_tokenizers.FAMILIES[family[0]]["template"]


def test_raise_exception_carries_the_same_message_as_transformers(family):
  _, auto, ours, _ = family
  template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System first!') }}" \
             "{% endif %}ok"
  jinja2 = pytest.importorskip("jinja2")
  with pytest.raises(jinja2.TemplateError) as theirs:
    auto.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
  ours.chat_template = template
  try:
    with pytest.raises(chat.ChatTemplateError) as mine:
      chat.render(ours, MESSAGES)
  finally:
    ours.chat_template = chat_tokenizers.FAMILIES[family[0]]["template"]
  assert str(mine.value) == str(theirs.value) == "System first!"
