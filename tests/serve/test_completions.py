"""/v1/completions through the official openai client: equal to the library, streams,
seeds, echo logprobs; chat without a template."""
import jax
import numpy as np
import openai
import pytest
from flax import nnx

from treadle.infer import sampler as sampler_lib

# short, as long as the 32-token context holds (a longer prompt is a 400: test_memory.py),
# mixed characters
PROMPTS = ["ROMEO:", "To be, or not", "First Citizen:\nWe are accounted", "a"]


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def sampler(served_run):
  # one device, as the server: compiling for the test session's 8 would only take longer
  return sampler_lib.Sampler.from_workdir(served_run, mesh_shape=(1, 1, 1),
                                          devices=jax.devices()[:1])


def test_health_and_models(server, client):
  health = server.health()
  assert health["status"] == "ok" and health["max_batch"] == 32 and health["step"] == 200
  assert [m.id for m in client.models.list().data] == [health["model"]]


# 60 new tokens from a 32-token context: the cache slides, as in the library
@pytest.mark.parametrize("max_tokens", [20, 60])
def test_greedy_equals_sampler_generate(client, sampler, max_tokens):
  # ignore_eos: the token count below is the point (where generation ends: test_real_tokenizers)
  expected = [c.text for c in sampler.generate(PROMPTS, max_new_tokens=max_tokens,
                                               temperature=0.0, ignore_eos=True)]
  out = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=max_tokens,
                                  temperature=0, extra_body={"ignore_eos": True})
  assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == expected
  assert len(set(expected)) > 1 and all(len(set(t)) > 1 for t in expected)
  assert out.usage.completion_tokens == max_tokens * len(PROMPTS)
  assert out.usage.prompt_tokens == sum(len(p) for p in PROMPTS)  # one token per character


def test_sampled_equals_sampler_generate_with_the_same_seed(client, sampler):
  # choice i samples with row i's key, as the sampler's row i does
  expected = [c.text for c in sampler.generate(PROMPTS, max_new_tokens=40, temperature=0.9,
                                               top_k=20, top_p=0.95, seed=11)]
  out = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=40, temperature=0.9,
                                  top_p=0.95, seed=11, extra_body={"top_k": 20})
  assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == expected
  assert len(set(expected)) == len(PROMPTS)


def test_same_seed_same_text_other_seed_differs(client):
  def text(seed):
    return client.completions.create(model="tiny", prompt="KING:", max_tokens=40,
                                     temperature=1.0, seed=seed).choices[0].text
  assert text(5) == text(5)
  assert text(5) != text(6)


@pytest.mark.parametrize("args", [
    dict(temperature=0),
    dict(temperature=0.8, seed=3, stop=["e", "\n\n"]),
    dict(temperature=1.0, seed=4, n=2, logprobs=2),
])
def test_stream_concatenated_equals_unstreamed(client, args):
  whole = client.completions.create(model="tiny", prompt=PROMPTS[:2], max_tokens=50, **args)
  pieces, finish, logprobs = {}, {}, {}
  for chunk in client.completions.create(model="tiny", prompt=PROMPTS[:2], max_tokens=50,
                                         stream=True, **args):
    for c in chunk.choices:
      pieces[c.index] = pieces.get(c.index, "") + c.text
      if c.logprobs:
        logprobs.setdefault(c.index, []).extend(c.logprobs.token_logprobs)
      if c.finish_reason:
        finish[c.index] = c.finish_reason
  assert pieces == {c.index: c.text for c in whole.choices}
  assert finish == {c.index: c.finish_reason for c in whole.choices}
  if "logprobs" in args:
    assert logprobs == {c.index: c.logprobs.token_logprobs for c in whole.choices}
  if "stop" in args:  # the stop strings really cut something
    assert any(c.finish_reason == "stop" for c in whole.choices)


def _log_softmax_of_prompt(sampler, ids):
  """The model's own forward pass over the prompt, no cache, no server."""
  forward = jax.jit(lambda params, tokens: nnx.merge(sampler.graphdef, params)(tokens)[0])
  logits = forward(sampler.params, np.asarray([ids], np.int32))[0]
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  return [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)], logp


def test_echo_logprobs_equal_the_models_log_softmax(client, sampler):
  # token-id prompts and echo with max_tokens 0, as lm-evaluation-harness scores text
  prompts = [[int(t) for t in sampler.tokenizer.encode(p)] for p in ("ROMEO: my lord", "To be, or not to be")]
  out = client.completions.create(model="tiny", prompt=prompts, max_tokens=0, echo=True,
                                  logprobs=3)
  for ids, choice in zip(prompts, sorted(out.choices, key=lambda c: c.index)):
    expected, logp = _log_softmax_of_prompt(sampler, ids)
    assert choice.text == sampler.tokenizer.decode(ids)
    assert choice.logprobs.tokens == [sampler.tokenizer.decode([t]) for t in ids]
    assert choice.logprobs.token_logprobs[0] is None
    np.testing.assert_allclose(choice.logprobs.token_logprobs[1:], expected, rtol=1e-5,
                               atol=1e-5)
    top = choice.logprobs.top_logprobs[1]  # the 3 most likely after the first token
    best = np.argsort(-logp[0])[:3]
    assert set(top) >= {sampler.tokenizer.decode([int(i)]) for i in best}
  assert out.usage.prompt_tokens == sum(map(len, prompts)) and out.usage.completion_tokens == 0


def test_echo_with_one_new_token_as_lm_eval_asks(client, sampler):
  ids = [int(t) for t in sampler.tokenizer.encode("ROMEO: my lord")]
  out = client.completions.create(model="tiny", prompt=[ids], max_tokens=1, echo=True,
                                  logprobs=1, temperature=0)
  lp = out.choices[0].logprobs
  assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
  expected, logp = _log_softmax_of_prompt(sampler, ids)
  np.testing.assert_allclose(lp.token_logprobs[1:len(ids)], expected, rtol=1e-5, atol=1e-5)
  greedy = int(np.argmax(logp[-1]))  # the new token, greedy, and its logprob
  assert lp.tokens[-1] == sampler.tokenizer.decode([greedy])
  np.testing.assert_allclose(lp.token_logprobs[-1], logp[-1, greedy], rtol=1e-5, atol=1e-5)


def test_chat_without_a_template_is_a_400(client):
  with pytest.raises(openai.BadRequestError) as e:
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
  assert e.value.status_code == 400 and "has no chat template" in str(e.value)
