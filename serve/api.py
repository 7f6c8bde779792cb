"""The HTTP routes: /health, /v1/models, /v1/completions, /v1/chat/completions."""
import asyncio
import contextlib
import json
import secrets
import time
import uuid
from typing import AsyncIterator

import fastapi
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses
from starlette import exceptions as starlette_exceptions

from treadle.data import chat
from treadle.serve import engine as engine_lib
from treadle.serve import guard
from treadle.serve import results
from treadle.serve import schemas

_ERRORS = {400: {"model": schemas.ErrorResponse, "description": "A bad field, named."},
           401: {"model": schemas.ErrorResponse, "description": "No or a wrong API key."},
           413: {"model": schemas.ErrorResponse, "description": "The body is too large."},
           429: {"model": schemas.ErrorResponse, "description": "The queue is full."}}
_STREAM = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                 "description": "JSON, or server-sent events with `stream: true`."}}


class ApiError(Exception):
  def __init__(self, status: int, message: str, param: str | None = None,
               kind: str = "invalid_request_error", code: str | None = None):
    super().__init__(message)
    self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


def _error_response(status: int, message: str, param=None, kind="invalid_request_error",
                    code=None) -> responses.JSONResponse:
  body = schemas.ErrorResponse(error=schemas.ErrorDetail(message=message, type=kind,
                                                         param=param, code=code))
  return responses.JSONResponse(body.model_dump(), status_code=status)


def _validation_error(exc: fastapi_exceptions.RequestValidationError) -> responses.JSONResponse:
  first = exc.errors()[0] if exc.errors() else {}
  loc = [str(x) for x in first.get("loc", ()) if x != "body"]
  # pydantic names the union member that failed ("str", "list[int]"): not a field
  loc = [x for x in loc if not any(c in x for c in "[]") and x not in ("str", "int")]
  param = loc[0] if loc else None
  where = ".".join(loc) or "body"
  return _error_response(400, f"{where}: {first.get('msg', 'invalid request')}", param)


class Server:
  """Holds the engine and turns requests into sequences and results into responses."""

  def __init__(self, eng: engine_lib.Engine, model_name: str, step: int):
    self.engine, self.model_name, self.step = eng, model_name, step
    self.tokenizer = eng.sampler.tokenizer
    self.draining = False

  # -- requests to sequences --------------------------------------------------------------

  @staticmethod
  def _prompt_list(prompt) -> list:
    """The request's prompts: one string or one list of token ids is a single prompt."""
    if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
      return [prompt]
    return prompt

  def _prompt_ids(self, prompt) -> list[list[int]]:
    prompt = self._prompt_list(prompt)
    if not prompt:
      raise ApiError(400, "prompt: give at least one prompt", "prompt")
    out = []
    for p in prompt:
      ids = self._encode(p) if isinstance(p, str) else list(p)
      if not ids:
        raise ApiError(400, "prompt: empty prompt; give at least one token", "prompt")
      bad = [t for t in ids if not 0 <= t < self.engine.vocab_size]
      if bad:
        raise ApiError(400, f"prompt: token id {bad[0]} is outside the vocabulary "
                       f"[0, {self.engine.vocab_size})", "prompt")
      self._check_length(len(ids), "prompt")
      out.append(ids)
    return out

  def _check_length(self, tokens: int, param: str) -> None:
    """A prompt the slots cannot hold is refused, never cut (vLLM does the same)."""
    if tokens > self.engine.window:
      raise ApiError(400, f"{param}: the prompt has {tokens} tokens, more than this server's "
                     f"--max_model_len of {self.engine.window}", param)

  def _check_fits(self, prompts: int, n: int) -> None:
    """More sequences than the slots and the queue hold could never run: 400, not the 429
    of a queue that is full for now (clients retry a 429)."""
    most = self.engine.max_batch + self.engine.max_queue
    if prompts * n > most:
      param = "n" if prompts == 1 else "prompt"
      raise ApiError(400, f"{param}: {prompts} prompt(s) x n={n} is {prompts * n} sequences; "
                     f"this server holds at most {most} (--max_batch {self.engine.max_batch} "
                     f"+ --max_queue {self.engine.max_queue})", param)

  def _encode(self, text: str) -> list[int]:
    try:
      return [int(t) for t in self.tokenizer.encode(text)]
    except ValueError as e:  # UnknownCharacterError: a character outside the vocabulary
      raise ApiError(400, f"prompt: {str(e).splitlines()[0]}", "prompt") from None

  def _sequences(self, req, prompts, max_tokens, emit, echo_logprobs=False, top_n=0):
    seed = secrets.randbits(31) if req.seed is None else req.seed
    seqs = []
    for i, ids in enumerate(prompts):
      for j in range(req.n):
        index = i * req.n + j
        seqs.append(engine_lib.Sequence(
            index=index, prompt_ids=ids, max_tokens=max_tokens, temperature=req.temperature,
            top_k=req.top_k, top_p=req.top_p, seed=seed, row=index, stop=list(req.stop or ()),
            top_n=min(top_n, self.engine.vocab_size), score_prompt=echo_logprobs, emit=emit,
            ignore_eos=req.ignore_eos, skip_special_tokens=req.skip_special_tokens))
    return seqs

  def _submit(self, seqs) -> None:
    if self.draining:
      raise ApiError(503, "the server is shutting down", kind="server_error")
    try:
      self.engine.submit(seqs)
    except engine_lib.QueueFull as e:
      raise ApiError(429, f"too many requests: {e}", kind="rate_limit_error",
                     code="queue_full") from None

  # -- completions ------------------------------------------------------------------------

  async def completions(self, req: schemas.CompletionRequest, request: fastapi.Request):
    self._check_fits(len(self._prompt_list(req.prompt)), req.n)
    prompts = await asyncio.to_thread(self._prompt_ids, req.prompt)  # the loop keeps serving
    if req.max_tokens == 0 and not req.echo:
      raise ApiError(400, "max_tokens: 0 generates nothing; set echo to score the prompt",
                     "max_tokens")
    wants_logprobs = req.logprobs is not None
    if req.echo and wants_logprobs and max(map(len, prompts)) > self.engine.window:
      raise ApiError(400, f"prompt: {max(map(len, prompts))} tokens is longer than the "
                     f"model's context ({self.engine.window}); echo logprobs need all of it",
                     "prompt")
    queue, emit = _event_queue()
    seqs = self._sequences(req, prompts, req.max_tokens, emit, req.echo and wants_logprobs,
                           req.logprobs or 0)
    self._submit(seqs)
    build = results.CompletionBuilder(self.tokenizer, prompts, req.n, req.echo, wants_logprobs)
    meta = _meta("cmpl", self.model_name)
    if req.stream:
      return self._stream(seqs, queue, request, lambda ev: build.chunk(ev, meta),
                          _if_usage(req, lambda: build.usage_chunk(meta)))
    await self._collect(seqs, queue, request, build.add)
    choices = build.choices()
    _raise_if_failed(c.finish_reason for c in choices)
    return schemas.CompletionResponse(**meta, choices=choices, usage=build.usage())

  async def chat_completions(self, req: schemas.ChatCompletionRequest, request: fastapi.Request):
    self._check_fits(1, req.n)
    try:
      text = await asyncio.to_thread(chat.render, self.tokenizer,
                                     [m.model_dump() for m in req.messages])
    except chat.ChatTemplateError as e:  # the template's raise_exception: its message
      raise ApiError(400, str(e), "messages") from None
    if text is None:
      raise ApiError(400, f"model {self.model_name!r} has no chat template (its tokenizer "
                     "carries none); use /v1/completions", "messages")
    prompts = await asyncio.to_thread(self._prompt_ids, text)
    max_tokens = req.max_completion_tokens or req.max_tokens or schemas.MAX_TOKENS
    queue, emit = _event_queue()
    seqs = self._sequences(req, prompts, max_tokens, emit)
    self._submit(seqs)
    build = results.CompletionBuilder(self.tokenizer, prompts, req.n, False, False)
    meta = _meta("chatcmpl", self.model_name)
    if req.stream:
      return self._stream(seqs, queue, request, lambda ev: build.chat_chunk(ev, meta),
                          _if_usage(req, lambda: build.usage_chunk(meta, chat=True)))
    await self._collect(seqs, queue, request, build.add)
    choices = build.chat_choices()
    _raise_if_failed(c.finish_reason for c in choices)
    return schemas.ChatCompletionResponse(**meta, choices=choices, usage=build.usage())

  # -- waiting for results ----------------------------------------------------------------

  async def _collect(self, seqs, queue: asyncio.Queue, request: fastapi.Request, add) -> None:
    """Feeds events to `add` until every sequence is done; a client that disconnects
    cancels its sequences (their slots free at the next step)."""
    left, checked = len(seqs), time.monotonic()
    try:
      while left:
        # events may arrive every few ms, so look at the connection by the clock
        if time.monotonic() - checked > 0.25:
          checked = time.monotonic()
          if await request.is_disconnected():
            self.engine.cancel(seqs)
            return
        try:
          event = await asyncio.wait_for(queue.get(), timeout=0.25)
        except asyncio.TimeoutError:
          continue
        add(event)
        left -= event.finish_reason is not None
    except asyncio.CancelledError:
      self.engine.cancel(seqs)
      raise

  def _stream(self, seqs, queue, request, to_chunk, usage_chunk) -> responses.StreamingResponse:
    async def events() -> AsyncIterator[str]:
      left = len(seqs)
      try:
        while left:
          event = await queue.get()
          left -= event.finish_reason is not None
          chunk = to_chunk(event)
          if usage_chunk:  # OpenAI: with include_usage, every other chunk has usage null
            chunk["usage"] = None
          yield f"data: {json.dumps(chunk)}\n\n"
        if usage_chunk:
          yield f"data: {json.dumps(usage_chunk())}\n\n"
        yield "data: [DONE]\n\n"
      finally:  # also when the client disconnects (the response task is cancelled)
        if left:
          self.engine.cancel(seqs)
    return responses.StreamingResponse(events(), media_type="text/event-stream")

  def health(self) -> schemas.Health:
    if not self.engine.healthy:
      raise ApiError(503, "the engine is rebuilding after a failed decode step",
                     kind="server_error", code="engine_unavailable")
    return schemas.Health(status="draining" if self.draining else "ok", model=self.model_name,
                          step=self.step, **self.engine.load())


def _if_usage(req, usage_chunk):
  """The stream's usage chunk, only when asked for with stream_options.include_usage."""
  options = req.stream_options
  return usage_chunk if options is not None and options.include_usage else None


def _raise_if_failed(finish_reasons) -> None:
  if "error" in finish_reasons:
    raise ApiError(500, "the decode loop failed (see the server log)", kind="server_error")


def _event_queue():
  """An asyncio queue and a thread-safe function that puts into it (from the engine)."""
  loop = asyncio.get_running_loop()
  queue: asyncio.Queue = asyncio.Queue()

  def emit(event) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
      loop.call_soon_threadsafe(queue.put_nowait, event)
  return queue, emit


def _meta(prefix: str, model: str) -> dict:
  return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def make_app(server: Server, lifespan=None, api_key: str | None = None,
             max_body_bytes: int = 4 * 2**20) -> fastapi.FastAPI:
  app = fastapi.FastAPI(title="treadle-serve", version="1", lifespan=lifespan)
  app.add_middleware(guard.BodyLimit, max_bytes=max_body_bytes)
  if api_key:  # added last: it runs first, before any body is read
    app.add_middleware(guard.ApiKey, key=api_key)

  @app.exception_handler(fastapi_exceptions.RequestValidationError)
  async def _bad_request(request, exc):
    return _validation_error(exc)

  @app.exception_handler(starlette_exceptions.HTTPException)
  async def _http_error(request, exc):  # e.g. a body that is not UTF-8, an unknown path
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _error_response(exc.status_code, str(exc.detail), kind=kind)

  @app.exception_handler(ApiError)
  async def _api_error(request, exc: ApiError):
    return _error_response(exc.status, exc.message, exc.param, exc.kind, exc.code)

  @app.get("/health", response_model=schemas.Health, responses={
      503: {"model": schemas.ErrorResponse, "description": "Rebuilding after a failure."}})
  async def health():
    return server.health()

  @app.get("/v1/models", response_model=schemas.ModelList)
  async def models():
    return schemas.ModelList(data=[schemas.ModelCard(id=server.model_name, created=0)])

  @app.post("/v1/completions", response_model=schemas.CompletionResponse,
            responses={**_STREAM, **_ERRORS})
  async def completions(req: schemas.CompletionRequest, request: fastapi.Request):
    return await server.completions(req, request)

  @app.post("/v1/chat/completions", response_model=schemas.ChatCompletionResponse,
            responses={**_STREAM, **_ERRORS})
  async def chat_completions(req: schemas.ChatCompletionRequest, request: fastapi.Request):
    return await server.chat_completions(req, request)

  return app
