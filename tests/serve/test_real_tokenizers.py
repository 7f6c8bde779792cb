"""Decoding an imported model as its users see it: a SentencePiece-style (Metaspace,
byte-fallback) tokenizer as Llama 2 and Mistral ship, an end-of-sequence id from its
config.json, special tokens skipped — in Sampler.generate and stream, treadle-sample and
the server, which all share one text stream (treadle.data.streaming)."""
import json

import httpx
import pytest
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from tests.conftest import run_cli
from tests.hf import synthetic
from tests.serve.conftest import ServerProcess
from treadle.hf import importer
from treadle.infer import sampler as sampler_lib

VOCAB = 512
PROMPT = "the king is dead; long live the"
NEW = 24


def _metaspace_tokenizer(text: str) -> hf.Tokenizer:
  """Llama 2's layout: ▁ for spaces, bytes for unseen characters, <s> and </s>."""
  tok = hf.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  trainer = trainers.BpeTrainer(vocab_size=VOCAB - 12, show_progress=False,
                                special_tokens=["<unk>", "<s>", "</s>"],
                                initial_alphabet=[f"<0x{i:02X}>" for i in range(256)])
  tok.train_from_iterator([text[:100_000]], trainer)
  return tok


def _import(tmp, text: str, name: str, eos_token_id: int):
  config = {**synthetic.LLAMA_CONFIG, "vocab_size": VOCAB, "bos_token_id": 1,
            "eos_token_id": eos_token_id}
  hf_dir = synthetic.write(tmp / f"{name}_hf", config, text, seed=3)
  _metaspace_tokenizer(text).save(str(hf_dir / "tokenizer.json"))
  (hf_dir / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}))
  importer.import_model(hf_dir, tmp / name)
  return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_file):
  """The same weights imported twice: with </s> as end of sequence, and with the token
  its greedy continuation of PROMPT samples at step `stop_at` as end of sequence."""
  tmp = tmp_path_factory.mktemp("real_tokenizers")
  text = text_file.read_text()
  plain = _import(tmp, text, "plain", 2)
  greedy = sampler_lib.Sampler.from_workdir(plain).generate(
      PROMPT, max_new_tokens=NEW, temperature=0.0, ignore_eos=True)[0].token_ids
  stop_at = next(i for i in range(5, NEW) if greedy[i] not in greedy[:i])
  ends = _import(tmp, text, "ends", greedy[stop_at])
  return plain, ends, greedy, stop_at


def _expected_text(tokenizer, prompt_ids, new_ids) -> str:
  """What the new ids add to the prompt's text (transformers' and vLLM's definition)."""
  whole = tokenizer.hf_tokenizer.decode([*prompt_ids, *new_ids], skip_special_tokens=True)
  prompt = tokenizer.hf_tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
  assert whole.startswith(prompt)
  return whole[len(prompt):]


SAMPLED = dict(max_new_tokens=NEW, temperature=1.0, seed=0, ignore_eos=True)


def test_metaspace_text_keeps_its_spaces_streamed_and_whole(runs):
  plain = runs[0]
  sampler = sampler_lib.Sampler.from_workdir(plain)
  ids = sampler.tokenizer.encode(PROMPT)
  # sampled, not greedy: a random model's greedy text repeats one piece, with no words
  out = sampler.generate(PROMPT, **SAMPLED)[0]
  expected = _expected_text(sampler.tokenizer, ids, out.token_ids)
  assert expected.count(" ") >= 3  # the continuation has words, so the test can see spaces
  assert out.text == expected
  kw = SAMPLED
  assert "".join(sampler.stream(PROMPT, chunk_tokens=1, **kw)) == expected
  assert "".join(sampler.stream(PROMPT, chunk_tokens=5, **kw)) == expected


def test_generation_ends_at_the_models_eos_and_leaves_its_text_out(runs):
  _, ends, greedy, stop_at = runs
  sampler = sampler_lib.Sampler.from_workdir(ends)
  assert greedy[stop_at] in sampler.stop_ids
  ids = sampler.tokenizer.encode(PROMPT)
  out = sampler.generate(PROMPT, max_new_tokens=NEW, temperature=0.0)[0]
  assert out.token_ids == greedy[:stop_at + 1]
  assert out.finish_reason == "stop"
  assert out.text == _expected_text(sampler.tokenizer, ids, greedy[:stop_at])
  streamed = "".join(sampler.stream(PROMPT, max_new_tokens=NEW, temperature=0.0))
  assert streamed == out.text
  # ignore_eos runs to max_new_tokens, as before end-of-sequence ids were honoured
  assert sampler.generate(PROMPT, max_new_tokens=NEW, temperature=0.0,
                          ignore_eos=True)[0].token_ids == greedy


def test_special_tokens_are_skipped_unless_asked_for(runs):
  plain, _, _, _ = runs
  sampler = sampler_lib.Sampler.from_workdir(plain)
  bos = sampler.tokenizer.hf_tokenizer.token_to_id("<s>")
  prompt_ids = sampler.tokenizer.encode(PROMPT)
  word = sampler.tokenizer.encode(" king")
  from treadle.data import streaming
  shown = streaming.TextStream(sampler.tokenizer, prompt_ids, 10)
  for i in [*word, bos, *word]:
    shown.add(i)
  assert shown.text == " king king"
  raw = streaming.TextStream(sampler.tokenizer, prompt_ids, 10, skip_special_tokens=False)
  for i in [*word, bos, *word]:
    raw.add(i)
  assert raw.text == " king<s> king"


def test_treadle_sample_ends_at_eos(runs):
  _, ends, greedy, stop_at = runs
  out = run_cli("treadle.infer.cli", "--workdir", ends, "--prompt", PROMPT, "--temperature", "0",
                "--max_new_tokens", str(NEW), "--json")
  sample = json.loads(out.stdout)["samples"][0]
  assert (sample["num_tokens"], sample["finish_reason"]) == (stop_at + 1, "stop")


def _complete(url, **body):
  response = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": NEW,
                                                      "temperature": 0, **body}, timeout=120)
  assert response.status_code == 200, response.text
  return response.json()


def _streamed(url, **body):
  text, reasons = "", []
  with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
      "prompt": PROMPT, "max_tokens": NEW, "temperature": 0, "stream": True, **body}) as r:
    for line in r.iter_lines():
      if line.startswith("data: {"):
        for choice in json.loads(line[6:])["choices"]:
          text += choice["text"]
          reasons.append(choice["finish_reason"])
  return text, [r for r in reasons if r]


def test_server_text_and_end_equal_the_samplers(runs):
  _, ends, greedy, stop_at = runs
  sampler = sampler_lib.Sampler.from_workdir(ends)
  kw = dict(max_new_tokens=NEW, temperature=0.0)
  ended, full = sampler.generate(PROMPT, **kw)[0], sampler.generate(PROMPT, ignore_eos=True,
                                                                    **kw)[0]
  sampled = sampler.generate(PROMPT, **SAMPLED)[0]
  server = ServerProcess(ends, "--max_batch=2")
  try:
    body = _complete(server.url)
    assert body["choices"][0]["text"] == ended.text
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == stop_at + 1
    assert _streamed(server.url) == (ended.text, ["stop"])
    body = _complete(server.url, ignore_eos=True)
    assert (body["choices"][0]["text"], body["choices"][0]["finish_reason"]) == (full.text,
                                                                                "length")
    assert _streamed(server.url, ignore_eos=True) == (full.text, ["length"])
    # words: the spaces a decoder of new ids alone drops
    words = dict(temperature=1.0, seed=0, ignore_eos=True)
    assert _complete(server.url, **words)["choices"][0]["text"] == sampled.text
    assert _streamed(server.url, **words) == (sampled.text, ["length"])
    assert sampled.text.count(" ") >= 3
  finally:
    server.stop()
