"""/v1/chat/completions on an imported model with a chat template: the prompt starts with
tokenizer_config.json's bos_token, and a template's raise_exception is a 400 with its message."""
import json

import httpx
import pytest

from tests.conftest import run_cli
from tests.hf import synthetic
from tests.serve.conftest import ServerProcess
from treadle.data import tokenizers

MESSAGE = "Conversation roles must alternate user/assistant/user/assistant/..."
TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
            "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
            "{{ raise_exception('" + MESSAGE + "') }}{% endif %}"
            "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, text_file):
  """A tiny random Llama imported with a Mistral-like template (roles must alternate)."""
  root = tmp_path_factory.mktemp("chat")
  hf_dir = synthetic.write(root / "hf", synthetic.LLAMA_CONFIG, text_file.read_text())
  (hf_dir / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": {"__type": "AddedToken", "content": "<|bos|>"}, "eos_token": "<|eos|>",
       "chat_template": TEMPLATE}))
  run_cli("treadle.hf.import_cli", "--hf_dir", hf_dir, "--workdir", root / "run")
  return root / "run"


@pytest.fixture(scope="module")
def chat_server(chat_run):
  proc = ServerProcess(chat_run, "--max_batch=2", "--max_queue=2")
  yield proc
  proc.stop()


def _chat(server, messages) -> httpx.Response:
  return httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                    json={"messages": messages, "max_tokens": 2, "temperature": 0})


def test_chat_prompt_starts_with_the_bos_token_of_tokenizer_config(chat_server, chat_run):
  messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
              {"role": "user", "content": "Speak"}]
  r = _chat(chat_server, messages)
  assert r.status_code == 200, r.text
  tok = tokenizers.load(chat_run)
  prompt = tok.encode("<|bos|><|user|>Hello<|assistant|>Hi<|user|>Speak<|assistant|>")
  assert prompt[0] == tok.hf_tokenizer.token_to_id("<|bos|>")
  assert r.json()["usage"]["prompt_tokens"] == len(prompt)


def test_raise_exception_in_the_template_is_a_400_with_its_message(chat_server):
  r = _chat(chat_server, [{"role": "user", "content": "one"},
                          {"role": "user", "content": "two"}])
  assert r.status_code == 400, r.text
  error = r.json()["error"]
  assert error["message"] == MESSAGE and error["param"] == "messages"
  assert chat_server.health()["status"] == "ok"  # the server goes on serving
