"""treadle-serve --quantize int8: the batch serves what the int8 Sampler generates."""
import jax
import openai
import pytest

from tests.serve.conftest import ServerProcess
from treadle.infer import sampler as sampler_lib

PROMPTS = ["ROMEO:", "To be, or not", "First Citizen:\nWe are accounted", "a"]


@pytest.fixture(scope="module")
def int8_server(served_run):
  proc = ServerProcess(served_run, "--quantize=int8", "--max_batch=4")
  yield proc
  proc.stop()


@pytest.mark.parametrize("max_tokens", [20, 60])  # 60: the 32-token cache slides
def test_greedy_equals_the_int8_sampler(int8_server, served_run, max_tokens):
  sampler = sampler_lib.Sampler.from_workdir(served_run, mesh_shape=(1, 1, 1),
                                             devices=jax.devices()[:1], quantize="int8")
  expected = [c.text for c in sampler.generate(PROMPTS, max_new_tokens=max_tokens,
                                               temperature=0.0, ignore_eos=True)]
  client = openai.OpenAI(base_url=f"{int8_server.url}/v1", api_key="unused", max_retries=0,
                         timeout=60)
  out = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=max_tokens,
                                  temperature=0, extra_body={"ignore_eos": True})
  assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == expected


def test_the_start_log_names_the_int8_weights(int8_server, served_run):
  line = next(line for line in int8_server.log if "KV cache:" in line)
  int8_bytes = int(line.split("weights ")[1].split(" bytes")[0].replace(",", ""))
  float_bytes = sampler_lib.Sampler.from_workdir(served_run, mesh_shape=(1, 1, 1),
                                                 devices=jax.devices()[:1]).weights_bytes
  assert 0 < int8_bytes < 0.45 * float_bytes  # the tiny run: embeddings are a fifth
