"""Bad fields (400), a full queue (429), disconnects, SIGTERM, and the bind address."""
import json
import signal
import threading
import time

import httpx
import pydantic
import pytest

from tests.serve.conftest import ServerProcess, assert_refused_at_start
from treadle.serve import schemas

LONG = 8000  # new tokens: many seconds of decoding, so a request is surely in flight
# (with ignore_eos: the tiny model's text may reach its end-of-sequence id sooner)


@pytest.fixture(scope="module")
def small(served_run):
  """2 slots and room for 1 more in the queue."""
  proc = ServerProcess(served_run, "--max_batch=2", "--max_queue=1")
  yield proc
  proc.stop()


GOOD = {"prompt": "ROMEO:", "max_tokens": 4}


@pytest.mark.parametrize("change,param", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),             # without echo: nothing to do
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"logprobs": 99}, "logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stop": ["ok", "x" * 257]}, "stop"),         # each at most 256 characters
    ({"stop": "x" * 257}, "stop"),
    ({"seed": -1}, "seed"),
    ({"stream": "maybe"}, "stream"),
    ({"echo": "yes"}, "echo"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [[1, 2], []]}, "prompt"),
    ({"prompt": [10**6]}, "prompt"),               # a token id outside the vocabulary
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": "snow \u2603"}, "prompt"),           # a character outside the vocabulary
    ({"prompt": 3.5}, "prompt"),
    ({"prompt": "x" * 40, "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),  # > context
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "end"}, "suffix"),
])
def test_each_bad_field_is_a_400_naming_it(small, change, param):
  body = {**GOOD, **change}
  r = httpx.post(f"{small.url}/v1/completions", json=body, timeout=30)
  assert r.status_code == 400, r.text
  error = r.json()["error"]
  assert error["param"] == param and param in error["message"], error
  assert error["type"] == "invalid_request_error"


_BASES = {schemas.CompletionRequest: {"prompt": "x"},
          schemas.ChatCompletionRequest: {"messages": [{"role": "user", "content": "x"}]}}


@pytest.mark.parametrize("model,field,default,refused", [
    (schemas.CompletionRequest, "best_of", 1, 3),
    (schemas.CompletionRequest, "suffix", "", "end"),
    (schemas.CompletionRequest, "presence_penalty", 0, 0.5),
    (schemas.ChatCompletionRequest, "frequency_penalty", 0.0, -1.0),
    (schemas.CompletionRequest, "logit_bias", {}, {"1": 5}),
    (schemas.ChatCompletionRequest, "logprobs", False, True),
    (schemas.ChatCompletionRequest, "tools", [], [{"type": "function"}]),
    (schemas.ChatCompletionRequest, "tool_choice", "none", "required"),
    (schemas.ChatCompletionRequest, "response_format", {"type": "text"},
     {"type": "json_schema"}),
    (schemas.ChatCompletionRequest, "logit_bias", None, {"7": -100}),
    (schemas.ChatCompletionRequest, "parallel_tool_calls", True, False),
    (schemas.ChatCompletionRequest, "store", False, True),
    (schemas.ChatCompletionRequest, "service_tier", "default", "flex"),
])
def test_unsupported_fields_take_only_their_openai_default(model, field, default, refused):
  assert getattr(model(**_BASES[model], **{field: default}), field) is None
  with pytest.raises(pydantic.ValidationError, match=f"{field} is not supported"):
    model(**_BASES[model], **{field: refused})


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"max_tokens": 4}, "prompt"),                      # missing
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 0}, "max_tokens"),
])
def test_missing_and_malformed_fields_are_400(small, path, body, param):
  r = httpx.post(f"{small.url}{path}", json=body, timeout=30)
  assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("content", [b"{not json", b"4\xff\x46\xfe"])  # the 2nd: not UTF-8
def test_a_body_that_is_not_json_is_a_400_in_the_openai_shape(small, content):
  r = httpx.post(f"{small.url}/v1/completions", content=content,
                 headers={"content-type": "application/json"}, timeout=30)
  assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


def _stream(url: str, body: dict, first_chunk: threading.Event, done: dict):
  """Streams one completion, reporting its first chunk, until the server closes it."""
  try:
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=120) as r:
      done["status"] = r.status_code
      for line in r.iter_lines():
        if line.startswith("data: "):
          first_chunk.set()
          done.setdefault("lines", []).append(line[len("data: "):])
  except httpx.HTTPError as e:
    done["error"] = e
  first_chunk.set()


def test_429_past_the_queue_then_disconnects_free_the_slots(small):
  body = {"prompt": "ROMEO:", "max_tokens": LONG, "ignore_eos": True}
  clients = []
  for _ in range(2):  # fill both slots with long streams
    client = httpx.Client(timeout=120)
    response = client.send(client.build_request("POST", f"{small.url}/v1/completions",
                                                json={**body, "stream": True}), stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()  # kept: dropping the iterator would close the stream
    next(lines)  # a first chunk: it holds a slot
    clients.append((client, response, lines))
  result = {}
  waiter = threading.Thread(target=lambda: result.update(
      r=httpx.post(f"{small.url}/v1/completions", json={**body, "max_tokens": 3}, timeout=120)))
  waiter.start()  # the third waits in the queue
  small.wait_for(lambda h: h["running"] == 2 and h["queued"] == 1)
  r = httpx.post(f"{small.url}/v1/completions", json=body, timeout=30)
  assert r.status_code == 429, r.text
  assert r.json()["error"]["type"] == "rate_limit_error"
  # a stream whose client goes away frees its slot: the queued request runs and finishes
  client, response, _ = clients.pop()
  response.close()
  client.close()
  waiter.join(timeout=60)
  assert result["r"].status_code == 200 and result["r"].json()["usage"]["completion_tokens"] == 3
  small.wait_for(lambda h: h["running"] == 1 and h["queued"] == 0)
  client, response, _ = clients.pop()
  response.close()
  client.close()
  small.wait_for(lambda h: h["running"] == 0)


def test_a_non_streaming_client_that_disconnects_frees_its_slot(small):
  with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
    httpx.post(f"{small.url}/v1/completions", timeout=httpx.Timeout(30, read=1.0),
               json={"prompt": "ROMEO:", "max_tokens": LONG, "ignore_eos": True})
  small.wait_for(lambda h: h["running"] == 0, timeout=10)


@pytest.mark.parametrize("flag,message", [
    ("--port=99999", "--port=99999 must be <= 65535"),  # was an OverflowError traceback
    ("--port=-1", "--port=-1 must be >= 0"),
    ("--max_batch=0", "--max_batch=0 must be >= 1"),
    ("--host=no.such.host.invalid", "cannot bind no.such.host.invalid:"),
    ("--step=last", "--step='last' must be a number, 'best' or 'latest'"),
])
def test_a_bad_flag_is_one_line_before_anything_loads(tmp_path, flag, message):
  assert_refused_at_start(tmp_path / "none", flag, message)


def test_sigterm_drains_requests_in_flight_then_exits_0(small):
  """Last in this file: it stops the module's server."""
  proc = small
  try:
    assert proc.url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
    first_chunk, done = threading.Event(), {}
    body = {"prompt": "ROMEO:", "max_tokens": 3000, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    reader = threading.Thread(target=_stream, args=(proc.url, body, first_chunk, done))
    reader.start()
    assert first_chunk.wait(60)
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):  # no new connections while it drains...
      httpx.get(f"{proc.url}/health", timeout=5)
    assert reader.is_alive()  # ...and the stream is still going
    reader.join(timeout=120)
    assert proc.proc.wait(timeout=60) == 0, "".join(proc.log[-20:])
    assert done.get("status") == 200 and "error" not in done, done
    *_, usage, last = done["lines"]  # the stream ran to its end after SIGTERM
    assert last == "[DONE]" and json.loads(usage)["usage"]["completion_tokens"] == 3000
  finally:
    proc.stop()
