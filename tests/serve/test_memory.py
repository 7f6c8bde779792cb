"""Bounded memory: --max_model_len sizes each slot's cache, --max_cache_gib bounds them all;
a prompt longer than a slot holds is a 400, never cut."""
import httpx
import pytest

from tests.serve.conftest import ServerProcess, assert_refused_at_start
from treadle.serve import engine as engine_lib

WINDOW = 16  # the tiny run's context is 32


@pytest.fixture(scope="module")
def short(served_run):
  proc = ServerProcess(served_run, f"--max_model_len={WINDOW}", "--max_batch=4")
  yield proc
  proc.stop()


def _complete(url, prompt, max_tokens):
  return httpx.post(f"{url}/v1/completions", timeout=120, json={
      "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})


def test_the_start_log_names_the_cache_size(short):
  line = next(line for line in short.log if "KV cache:" in line)
  assert f"KV cache: 4 slots x {WINDOW} tokens = " in line and "GiB" in line, line
  assert "step buckets [1, 2, 4]" in line, line


def test_a_prompt_longer_than_max_model_len_is_a_400_naming_both(short):
  response = _complete(short.url, "ROMEO: my lord, good night", 4)  # 26 characters, tokens
  assert response.status_code == 400, response.text
  error = response.json()["error"]
  assert error["param"] == "prompt"
  assert "26 tokens" in error["message"] and f"--max_model_len of {WINDOW}" in error["message"]


def test_decoding_slides_within_max_model_len(short):
  """Past the slot's window the cache slides (as the sampler's does at the model's)."""
  body = _complete(short.url, "ROMEO:", 3 * WINDOW).json()
  assert body["choices"][0]["finish_reason"] == "length"
  assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 3 * WINDOW,
                           "total_tokens": 6 + 3 * WINDOW}


@pytest.mark.parametrize("flag,message", [
    ("--max_model_len=33", "--max_model_len=33 must be in [2, 32] (the model's context)"),
    ("--max_cache_gib=0.00001", "needs 0.00 GiB, over --max_cache_gib=1e-05"),
    ("--max_cache_gib=0", "--max_cache_gib=0.0 must be a number > 0"),
    ("--max_model_len=-1", "--max_model_len=-1 must be >= 0"),
])
def test_memory_flags_out_of_range_are_one_line(served_run, flag, message):
  assert_refused_at_start(served_run, flag, message)


def test_buckets_double_up_to_max_batch():
  assert engine_lib.buckets(1) == [1]
  assert engine_lib.buckets(32) == [1, 2, 4, 8, 16, 32]
  assert engine_lib.buckets(6) == [1, 2, 4, 6]
