"""Greedy chat equals transformers' `apply_chat_template(..., add_generation_prompt=True)` +
`generate` with the model's own generation config, token for token, and ends at the same
end-of-turn id: in Sampler.generate and in the server's /v1/chat/completions, for tiny random
Qwen2 and Llama 3 chat models. Needs torch and transformers."""
import json

import httpx
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from tests.hf import chat_tokenizers  # noqa: E402
from tests.hf import hf_models  # noqa: E402
from tests.serve.conftest import ServerProcess  # noqa: E402
from treadle.data import chat  # noqa: E402
from treadle.hf import importer  # noqa: E402
from treadle.infer import sampler as sampler_lib  # noqa: E402

NEW = 16  # max_new_tokens: the reply to ENDING ends well before
ENDING = chat_tokenizers.CONVERSATIONS[2]  # multi-turn: its greedy reply ends the turn
# config.json's and generation_config.json's ids as the released instruct models have them
# (ids of chat_tokenizers' specials): Qwen2-7B-Instruct ends a turn at config.json's eos,
# <|im_end|>; Llama-3-8B-Instruct's config.json names <|end_of_text|> and only
# generation_config.json adds <|eot_id|>
EOS = {
    "qwen2": dict(config=dict(bos_token_id=0, eos_token_id=2),
                  generation=dict(bos_token_id=0, eos_token_id=[2, 0], pad_token_id=0)),
    "llama3": dict(config=dict(bos_token_id=0, eos_token_id=1),
                   generation=dict(bos_token_id=0, eos_token_id=[1, 5])),
}


def _inputs(tokenizer, messages) -> dict:
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)


def _plain_greedy(model, tokenizer, messages) -> list[int]:
  """NEW greedy ids by forward passes alone: no end-of-sequence, no generation config."""
  ids = _inputs(tokenizer, messages)["input_ids"]
  out = []
  with torch.no_grad():
    for _ in range(NEW):
      out.append(int(model(ids).logits[0, -1].argmax()))
      ids = torch.cat([ids, torch.tensor([out[-1:]])], dim=1)
  return out


def _end_the_turn(model, tokenizer, end_of_turn: int, stop_ids: list[int]) -> int:
  """Swaps the output rows of `end_of_turn` and of the new token greedy samples at a step
  k >= 5 of its reply to ENDING, so that the reply ends its turn there; returns k. Steps
  before k sampled neither token, so they keep their argmax."""
  greedy = _plain_greedy(model, tokenizer, ENDING)
  k = next((k for k in range(5, NEW - 2)
            if greedy[k] not in greedy[:k] and not set(greedy[:k + 1]) & set(stop_ids)), None)
  assert k is not None, f"no new token to end the turn at in {greedy}"
  with torch.no_grad():
    rows = model.lm_head.weight
    rows[[greedy[k], end_of_turn]] = rows[[end_of_turn, greedy[k]]].clone()
  return k


@pytest.fixture(scope="module", params=list(EOS))
def chat_model(request, tmp_path_factory, text_file):
  """(family, HF model and tokenizer loaded from the saved directory, treadle's Sampler of
  its import, run dir, the step k at which the reply to ENDING ends its turn)."""
  family, eos = request.param, EOS[request.param]
  root = tmp_path_factory.mktemp(f"chat_{family}")
  hf_dir = root / "hf"
  # untied: output rows swap without touching the input embeddings of the prompt's tokens
  model = hf_models.build(family, tie_word_embeddings=False, **eos["config"])
  chat_tokenizers.save(family, hf_dir, text_file.read_text())
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  end_of_turn = tokenizer.convert_tokens_to_ids(chat_tokenizers.FAMILIES[family]["end_of_turn"])
  assert end_of_turn in eos["generation"]["eos_token_id"]
  k = _end_the_turn(model, tokenizer, end_of_turn, eos["generation"]["eos_token_id"])
  model.save_pretrained(hf_dir)
  transformers.GenerationConfig(**eos["generation"]).save_pretrained(hf_dir)
  importer.import_model(hf_dir, root / "run")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  sampler = sampler_lib.Sampler.from_workdir(root / "run")
  return family, hf_model.eval(), tokenizer, sampler, root / "run", k


def _hf_reply(model, tokenizer, messages) -> list[int]:
  """transformers' greedy reply: the new ids, ending with an eos id if it stopped at one."""
  inputs = _inputs(tokenizer, messages)
  out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW)
  return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_transformers_ends_the_turn_early(chat_model):
  family, model, tokenizer, _, _, k = chat_model
  reply = _hf_reply(model, tokenizer, ENDING)
  end = chat_tokenizers.FAMILIES[family]["end_of_turn"]
  assert len(reply) == k + 1 < NEW and reply[-1] == tokenizer.convert_tokens_to_ids(end)


@pytest.mark.parametrize("messages", chat_tokenizers.CONVERSATIONS)
def test_sampler_chat_equals_transformers_token_for_token(chat_model, messages):
  family, model, tokenizer, sampler, _, _ = chat_model
  expected = _hf_reply(model, tokenizer, messages)
  prompt = chat.render(sampler.tokenizer, messages)
  assert sampler.tokenizer.encode(prompt).tolist() == _inputs(tokenizer, messages)[
      "input_ids"][0].tolist()
  out = sampler.generate(prompt, max_new_tokens=NEW, temperature=0.0)[0]
  assert out.token_ids == expected, family
  ended = expected[-1] in EOS[family]["generation"]["eos_token_id"]
  assert out.finish_reason == ("stop" if ended else "length")
  assert out.text == tokenizer.decode(expected, skip_special_tokens=True)


def test_sampler_runs_past_the_end_of_turn_with_ignore_eos(chat_model):
  """What the tests above see on code that ignores end-of-sequence ids."""
  _, model, tokenizer, sampler, _, k = chat_model
  prompt = chat.render(sampler.tokenizer, ENDING)
  out = sampler.generate(prompt, max_new_tokens=NEW, temperature=0.0, ignore_eos=True)[0]
  assert out.token_ids[:k + 1] == _hf_reply(model, tokenizer, ENDING)
  assert (len(out.token_ids), out.finish_reason) == (NEW, "length")


def _chat(url: str, **body) -> dict:
  response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
      "messages": ENDING, "max_tokens": NEW, "temperature": 0, **body})
  assert response.status_code == 200, response.text
  return response.json()


def _chat_streamed(url: str, **body) -> tuple[str, list[str]]:
  text, reasons = "", []
  with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120, json={
      "messages": ENDING, "max_tokens": NEW, "temperature": 0, "stream": True, **body}) as r:
    assert r.status_code == 200, r.read()
    for line in r.iter_lines():
      if line.startswith("data: {"):
        for choice in json.loads(line[6:])["choices"]:
          text += choice["delta"].get("content", "")
          reasons.append(choice["finish_reason"])
  return text, [r for r in reasons if r]


def test_server_chat_equals_transformers(chat_model):
  _, model, tokenizer, sampler, run, _ = chat_model
  expected = _hf_reply(model, tokenizer, ENDING)
  content = tokenizer.decode(expected, skip_special_tokens=True)
  longer = sampler.generate(chat.render(sampler.tokenizer, ENDING), max_new_tokens=NEW,
                            temperature=0.0, ignore_eos=True)[0]
  server = ServerProcess(run, "--max_batch=2")
  try:
    body = _chat(server.url)
    choice = body["choices"][0]
    assert choice["message"]["content"] == content
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(expected)
    assert _chat_streamed(server.url) == (content, ["stop"])
    # ignore_eos: past the end of turn to max_tokens
    body = _chat(server.url, ignore_eos=True)
    assert body["choices"][0]["message"]["content"] == longer.text != content
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == (
        "length", NEW)
  finally:
    server.stop()


REPLIES = [[{"role": "user", "content": f"What is {a} and {b}?"},
            {"role": "assistant", "content": f"{a + b}."},
            {"role": "user", "content": "And twice that?"},
            {"role": "assistant", "content": f"{2 * (a + b)}, of course."}]
           for a in range(1, 7) for b in range(1, 5)]


def test_sft_on_chat_rows_of_an_imported_model(chat_model, tmp_path):
  """Chat rows tokenize as transformers tokenizes the rendered conversation (turn by turn:
  the pieces join to the same ids), and SFT from the import trains on them."""
  from treadle.configs import base
  from treadle.data import post
  from treadle.train import config as config_lib
  from treadle.train import loop
  _, _, tokenizer, sampler, run, _ = chat_model
  for messages in REPLIES[:3]:
    ids, mask = post.sft_example(post.Renderer(sampler.tokenizer), {"messages": messages}, "")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[mask == 1]).startswith(messages[1]["content"])
  rows = tmp_path / "chat.jsonl"
  rows.write_text("".join(json.dumps({"messages": m}) + "\n" for m in REPLIES))
  c = base.get_config("sft").to_dict()
  c["data"].update(path=str(rows), val_fraction=0.2, test_fraction=0.1)
  c["train"].update(init_from=str(run), num_steps=4, batch_size=8, eval_every=2,
                    checkpoint_every=4, log_every=1)
  c["finetune"]["lora_rank"] = 4
  c["optimizer"].update(learning_rate=3e-2, warmup_steps=1)
  loop.train(config_lib.split(c), tmp_path / "sft")
  val = [json.loads(l)["val_loss"] for l in (tmp_path / "sft" / "metrics.jsonl").read_text()
         .splitlines() if "val_loss" in l]
  assert len(val) == 3 and val[0] > val[1] > val[2], val  # steps 0 (the import), 2, 4
