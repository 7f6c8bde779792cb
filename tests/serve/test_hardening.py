"""The hardened server: API key, body cap, the usage chunk on request, unsupported OpenAI
fields, tokenizing off the event loop, recovery from a failed step, a bounded SIGTERM.

Most run against an in-process server (engine + app + uvicorn in a thread), so a test can
reach into the engine to inject a failure."""
import contextlib
import json
import signal
import socket
import threading
import time

import httpx
import jax
import openai
import pytest
import uvicorn

from tests.conftest import run_cli
from tests.serve.conftest import ServerProcess
from treadle.infer import sampler as sampler_lib
from treadle.serve import api
from treadle.serve import engine as engine_lib

KEY = "open sesame"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_BODY = 16 * 1024


class InProcess:
  """Engine, app and uvicorn in this process: 2 slots, 2 queued, the API key, a 16 KiB cap."""

  def __init__(self, workdir):
    sampler = sampler_lib.Sampler.from_workdir(workdir, mesh_shape=(1, 1, 1),
                                               devices=jax.devices()[:1])
    self.engine = engine_lib.Engine(sampler, max_batch=2, max_queue=2)
    self.engine.warm_up()
    self.server = api.Server(self.engine, "tiny", sampler.step)

    @contextlib.asynccontextmanager
    async def lifespan(app):
      self.engine.start()
      yield
      self.engine.stop()
    app = api.make_app(self.server, lifespan, api_key=KEY, max_body_bytes=MAX_BODY)
    self.uvicorn = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                 log_level="warning"))
    self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
    self.thread.start()
    deadline = time.monotonic() + 60
    while not self.uvicorn.started:
      assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
      time.sleep(0.05)
    port = self.uvicorn.servers[0].sockets[0].getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"

  def post(self, path, body, headers=AUTH, timeout=60, **kw) -> httpx.Response:
    return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=timeout, **kw)

  def greedy(self, prompt="ROMEO:", max_tokens=12) -> httpx.Response:
    return self.post("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens,
                                         "temperature": 0})

  def close(self):
    self.uvicorn.should_exit = True
    self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def inproc(served_run):
  server = InProcess(served_run)
  yield server
  server.close()


@pytest.fixture(scope="module")
def client(inproc):
  return openai.OpenAI(base_url=f"{inproc.url}/v1", api_key=KEY, max_retries=0, timeout=60)


# -- the API key -------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"authorization": KEY},  # no scheme
                                     {"authorization": f"Basic {KEY}"}])
@pytest.mark.parametrize("method,path", [("POST", "/v1/completions"), ("GET", "/v1/models"),
                                         ("GET", "/openapi.json")])
def test_every_route_but_health_needs_the_key(inproc, headers, method, path):
  r = httpx.request(method, f"{inproc.url}{path}", headers=headers, timeout=30,
                    json={"prompt": "ROMEO:", "max_tokens": 2} if method == "POST" else None)
  assert r.status_code == 401, r.text
  error = r.json()["error"]
  assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
  assert r.headers["www-authenticate"] == "Bearer"


def test_with_the_key_every_route_answers_and_health_needs_none(inproc, client):
  assert httpx.get(f"{inproc.url}/health", timeout=30).json()["status"] == "ok"
  assert [m.id for m in client.models.list().data] == ["tiny"]
  assert httpx.get(f"{inproc.url}/openapi.json", headers=AUTH, timeout=30).status_code == 200
  out = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=3,
                                  extra_body={"ignore_eos": True})
  assert out.usage.completion_tokens == 3


# -- the body cap ------------------------------------------------------------------------

def _body_of(size: int) -> bytes:
  """A valid completion request of exactly `size` bytes (padded with spaces)."""
  body = json.dumps({"prompt": "ROMEO:", "max_tokens": 1}).encode()
  return body[:-1] + b" " * (size - len(body)) + b"}"


def test_a_body_over_the_cap_is_413_by_its_length(inproc):
  headers = {**AUTH, "content-type": "application/json"}
  ok = httpx.post(f"{inproc.url}/v1/completions", content=_body_of(MAX_BODY), headers=headers,
                  timeout=30)
  assert ok.status_code == 200, ok.text  # the cap itself is allowed
  r = httpx.post(f"{inproc.url}/v1/completions", content=_body_of(MAX_BODY + 1),
                 headers=headers, timeout=30)
  assert r.status_code == 413, r.text
  assert r.json()["error"]["code"] == "request_too_large"


def test_a_streamed_body_over_the_cap_is_413_by_what_arrives(inproc):
  def chunks():  # no Content-Length: chunked transfer encoding
    body = _body_of(4 * MAX_BODY)
    for i in range(0, len(body), 1024):
      yield body[i:i + 1024]
  r = httpx.post(f"{inproc.url}/v1/completions", content=chunks(),
                 headers={**AUTH, "content-type": "application/json"}, timeout=30)
  assert "content-length" not in r.request.headers
  assert r.status_code == 413, r.text
  assert r.json()["error"]["code"] == "request_too_large"


# -- the usage chunk ---------------------------------------------------------------------

def test_a_stream_sends_usage_only_when_asked(client):
  plain = list(client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=5,
                                         temperature=0, stream=True))
  assert all(len(c.choices) == 1 for c in plain)  # clients may read chunk.choices[0]
  assert all(c.usage is None for c in plain)
  asked = list(client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=5,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True},
                                         extra_body={"ignore_eos": True}))
  *chunks, last = asked
  assert last.choices == [] and last.usage.completion_tokens == 5
  assert all(len(c.choices) == 1 and c.usage is None for c in chunks)
  assert "".join(c.choices[0].text for c in chunks) == "".join(c.choices[0].text for c in plain)


def test_stream_options_need_stream(inproc):
  r = inproc.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 2,
                                      "stream_options": {"include_usage": True}})
  assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options", r.text


# -- unsupported OpenAI fields -----------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("field,value", [
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"),
    ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}),
    ("response_format", {"type": "json_object"}),
    ("parallel_tool_calls", False),
    ("logit_bias", {"1": 5}),
    ("top_logprobs", 2),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("store", True),
    ("reasoning_effort", "low"),
    ("web_search_options", {}),
])
def test_an_unsupported_chat_field_is_a_400_naming_it(inproc, field, value):
  r = inproc.post("/v1/chat/completions", {**CHAT, field: value})
  assert r.status_code == 400, r.text
  error = r.json()["error"]
  assert error["param"] == field and f"{field} is not supported" in error["message"], error


def test_unsupported_chat_fields_at_their_defaults_pass(inproc):
  defaults = {"tools": [], "tool_choice": "none", "functions": None, "function_call": "auto",
              "response_format": {"type": "text"}, "parallel_tool_calls": True,
              "logit_bias": {}, "modalities": ["text"], "store": False, "metadata": {},
              "service_tier": "auto", "verbosity": "medium", "user": "u",
              "safety_identifier": "s", "not_an_openai_field": 1}
  r = inproc.post("/v1/chat/completions", {**CHAT, **defaults})
  # past validation: this model has no chat template, and says so
  assert r.status_code == 400 and "has no chat template" in r.text, r.text


def test_lm_eval_and_openai_client_requests_still_pass(inproc, client):
  # what lm-evaluation-harness's local-completions sends to score and to generate
  ids = [[int(t) for t in inproc.server.tokenizer.encode("ROMEO: my lord")]]
  score = inproc.post("/v1/completions", {"model": "tiny", "prompt": ids, "temperature": 0,
                                          "max_tokens": 0, "logprobs": 1, "seed": 1234,
                                          "echo": True})
  assert score.status_code == 200, score.text
  gen = inproc.post("/v1/completions", {"model": "tiny", "prompt": ["ROMEO:"], "max_tokens": 4,
                                        "temperature": 0, "stop": ["\n\n"], "seed": 1234})
  assert gen.status_code == 200, gen.text
  out = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=2, logprobs=2,
                                  echo=True, seed=3, user="u")
  assert out.choices[0].logprobs.token_logprobs[0] is None


# -- more than the server can ever hold --------------------------------------------------

@pytest.mark.parametrize("body,param", [
    ({"prompt": "ROMEO:", "n": 5}, "n"),
    ({"prompt": ["a", "b", "c"], "n": 2}, "prompt"),
    ({"prompt": [[1, 2]] * 5}, "prompt"),
])
def test_more_sequences_than_slots_and_queue_is_a_400_not_a_429(inproc, body, param):
  r = inproc.post("/v1/completions", {**body, "max_tokens": 2})
  assert r.status_code == 400, r.text  # a 429 would have the client retry forever
  error = r.json()["error"]
  assert error["param"] == param and "at most 4 (--max_batch 2 + --max_queue 2)" in error["message"]
  assert inproc.post("/v1/completions", {"prompt": ["a", "b"], "n": 2, "max_tokens": 2}
                     ).status_code == 200  # exactly what it holds


# -- off the event loop ------------------------------------------------------------------

class _SlowTokenizer:
  """The server's tokenizer, but encoding takes a second."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  def encode(self, text):
    time.sleep(1.5)
    return self._tokenizer.encode(text)

  def __getattr__(self, name):
    return getattr(self._tokenizer, name)


def test_tokenizing_does_not_block_other_requests(inproc):
  tokenizer, inproc.server.tokenizer = inproc.server.tokenizer, _SlowTokenizer(
      inproc.server.tokenizer)
  try:
    result = {}
    slow = threading.Thread(target=lambda: result.update(r=inproc.greedy()))
    slow.start()
    time.sleep(0.3)  # the request is being tokenized
    start = time.monotonic()
    assert httpx.get(f"{inproc.url}/health", timeout=30).status_code == 200
    waited = time.monotonic() - start
    slow.join(timeout=60)
    assert waited < 0.7, f"/health waited {waited:.2f} s for another request's tokenizing"
    assert result["r"].status_code == 200
  finally:
    inproc.server.tokenizer = tokenizer


# -- a failed step -----------------------------------------------------------------------

def test_a_failed_step_fails_its_requests_then_the_engine_rebuilds(inproc, monkeypatch):
  """Last of the in-process tests: it breaks the engine (and checks that it mends)."""
  expected = inproc.greedy().json()["choices"][0]["text"]
  engine = inproc.engine
  step, rebuild = engine._step, threading.Event()
  empty = getattr(engine, "_empty", None)  # None: an engine that does not rebuild
  failed = []

  def step_then_fail(*args):  # as a device error after the step consumed its slots
    out = step(*args)
    if not failed:
      failed.append(True)
      raise RuntimeError("injected failure")
    return out

  def slow_empty(*args):  # hold the rebuild until the test has seen /health say 503
    assert rebuild.wait(60)
    return empty(*args)
  monkeypatch.setattr(engine, "_step", step_then_fail)
  monkeypatch.setattr(engine, "_empty", slow_empty, raising=False)
  r = inproc.greedy(max_tokens=20)
  assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
  deadline = time.monotonic() + 30
  while (health := httpx.get(f"{inproc.url}/health", timeout=30)).status_code != 503:
    assert time.monotonic() < deadline, f"/health stayed {health.status_code}: {health.text}"
    time.sleep(0.05)
  assert health.json()["error"]["code"] == "engine_unavailable"
  queued = {}  # a request that arrives during the rebuild waits for it
  waiter = threading.Thread(target=lambda: queued.update(r=inproc.greedy()))
  waiter.start()
  rebuild.set()
  waiter.join(timeout=60)
  assert queued["r"].status_code == 200, queued["r"].text
  assert queued["r"].json()["choices"][0]["text"] == expected
  assert httpx.get(f"{inproc.url}/health", timeout=30).json()["status"] == "ok"
  assert inproc.greedy().json()["choices"][0]["text"] == expected


# -- the command line --------------------------------------------------------------------

@pytest.mark.parametrize("flags,env,warned", [
    (["--host=0.0.0.0"], {}, True),
    (["--host=0.0.0.0", "--api_key=k"], {}, False),
    (["--host=0.0.0.0"], {"TREADLE_API_KEY": "k"}, False),
    (["--host=127.0.0.1"], {}, False),
])
def test_a_non_loopback_address_without_a_key_is_warned_of(tmp_path, flags, env, warned):
  # the warning comes before the run loads; this run is missing, so it stops there
  proc = run_cli("treadle.serve.main", f"--workdir={tmp_path / 'none'}", "--port=0", *flags,
                 env=env, check=False)
  assert proc.returncode == 2 and "not a treadle run directory" in proc.stderr, proc.stderr
  assert ("0.0.0.0 is reachable from other machines" in proc.stderr) == warned, proc.stderr
  assert ("--api_key" in proc.stderr) == warned, proc.stderr


@pytest.mark.parametrize("flag,message", [
    ("--max_body_mb=0", "--max_body_mb=0.0 must be a number > 0"),
    ("--shutdown_timeout=-1", "--shutdown_timeout=-1.0 must be a number >= 0"),
])
def test_a_bad_hardening_flag_is_one_line(tmp_path, flag, message):
  proc = run_cli("treadle.serve.main", f"--workdir={tmp_path / 'none'}", "--port=0", flag,
                 check=False)
  assert proc.returncode == 2 and proc.stderr == f"error: {message}\n", proc.stderr


def test_sigterm_cuts_a_client_that_stopped_reading_after_the_shutdown_timeout(served_run):
  proc = ServerProcess(served_run, "--max_batch=1", "--max_queue=0", "--shutdown_timeout=1",
                       env={"TREADLE_API_KEY": KEY})
  try:
    assert httpx.get(f"{proc.url}/v1/models", timeout=30).status_code == 401  # the env's key
    port = int(proc.url.rsplit(":", 1)[1])
    # a stream whose client never reads: once the socket buffers are full (chunks with 20
    # alternatives per token are large), the server can send nothing more, ever
    body = json.dumps({"prompt": "ROMEO:", "max_tokens": 8192, "logprobs": 20,
                       "ignore_eos": True, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                 b"\r\nauthorization: Bearer " + KEY.encode() +
                 b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    proc.wait_for(lambda h: h["running"] == 1)
    time.sleep(1)
    proc.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert proc.proc.wait(timeout=30) == 0, "".join(proc.log[-20:])
    assert time.monotonic() - start < 15
    assert any("timeout graceful shutdown exceeded" in line for line in proc.log), proc.log
    sock.close()
  finally:
    proc.stop()
