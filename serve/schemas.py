"""Request and response bodies in the OpenAI shape (they also make /openapi.json).

Bounds that a schema can state are stated here, so a request that breaks one is a 400
naming the field before anything runs; the ones that need the model (characters outside
the vocabulary, a prompt longer than the context for echo logprobs) are checked by the API.
"""
from typing import Any, Literal

import pydantic

MAX_TOKENS = 8192      # per choice; past the context window the cache slides
MAX_CHOICES = 16       # n
MAX_STOP = 4           # stop strings, as OpenAI
MAX_STOP_CHARS = 256   # each: they are matched against the text on every new token
TOP_LOGPROBS = 20      # = slots.TOP_LOGPROBS (kept here so the schema imports no jax)

_Unsupported = pydantic.Field(None, description="Not supported: leave unset.")


def _refuse(*fields: str, unless: tuple | dict[str, tuple] = (None,), hint: str = ""):
  """A validator that refuses an unsupported field set to anything but its OpenAI default
  (`unless`, or `unless[field]`), naming the field; the accepted default is dropped (None)."""
  def check(cls, value, info):
    del cls
    allowed = unless[info.field_name] if isinstance(unless, dict) else unless
    if value not in allowed:
      raise ValueError(f"{info.field_name} {hint or 'is not supported by this server'}")
    return None
  return pydantic.field_validator(*fields)(classmethod(check))


class StreamOptions(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")

  include_usage: pydantic.StrictBool | None = pydantic.Field(
      None, description="Send a last chunk with `usage` and no choices before [DONE].")


class _Sampling(pydantic.BaseModel):
  """Fields shared by completions and chat completions."""
  model_config = pydantic.ConfigDict(extra="ignore")

  model: str | None = pydantic.Field(None, description="Any name: this server serves one model.")
  temperature: float = pydantic.Field(1.0, ge=0.0, le=2.0, description="0 = greedy.")
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0, description="Nucleus mass; 1 = off.")
  top_k: int = pydantic.Field(0, ge=0, le=1_000_000, description="Extension: keep the k "
                              "most likely tokens; 0 = off.")
  n: int = pydantic.Field(1, ge=1, le=MAX_CHOICES, description="Choices per prompt.")
  stop: str | list[str] | None = pydantic.Field(None, description="Up to 4 stop strings.")
  seed: int | None = pydantic.Field(None, ge=0, le=2**32 - 1, description="Same seed, same "
                                    "text; choice i samples as row i of Sampler.generate.")
  stream: pydantic.StrictBool = False
  ignore_eos: pydantic.StrictBool = pydantic.Field(False, description="Extension (as vLLM): "
                                                   "generate past end-of-sequence ids.")
  skip_special_tokens: pydantic.StrictBool = pydantic.Field(
      True, description="Extension (as vLLM): leave special tokens out of the text.")
  stream_options: StreamOptions | None = pydantic.Field(None, description="Only with "
                                                        "`stream: true`.")
  presence_penalty: float | None = _Unsupported
  frequency_penalty: float | None = _Unsupported
  logit_bias: dict[str, float] | None = _Unsupported
  user: str | None = None

  @pydantic.field_validator("stop")
  @classmethod
  def _check_stop(cls, stop):
    stops = [stop] if isinstance(stop, str) else stop or []
    if len(stops) > MAX_STOP:
      raise ValueError(f"at most {MAX_STOP} stop strings (got {len(stops)})")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
      longest = max(map(len, stops))
      raise ValueError(f"a stop string may hold at most {MAX_STOP_CHARS} characters "
                       f"(got {longest})")
    return stops

  @pydantic.field_validator("stream_options")
  @classmethod
  def _check_stream_options(cls, options, info):
    if options is not None and not info.data.get("stream"):  # as OpenAI
      raise ValueError("stream_options is only allowed with stream: true")
    return options

  _check_unsupported = _refuse("presence_penalty", "frequency_penalty", "logit_bias",
                               unless=(None, 0, 0.0, {}))


class CompletionRequest(_Sampling):
  prompt: str | list[str] | list[int] | list[list[int]] = pydantic.Field(
      description="Text, several texts, token ids, or several lists of token ids.")
  max_tokens: int = pydantic.Field(16, ge=0, le=MAX_TOKENS, description="0 only with echo: "
                                   "score the prompt without generating.")
  logprobs: int | None = pydantic.Field(None, ge=0, le=TOP_LOGPROBS, description="Return "
                                        "token logprobs and this many alternatives per token.")
  echo: pydantic.StrictBool = pydantic.Field(False, description="Prepend the prompt (and its token logprobs).")
  best_of: int | None = _Unsupported
  suffix: str | None = _Unsupported

  _check_best_of = _refuse("best_of", unless=(None, 1),
                           hint="is not supported by this server (use n)")
  _check_suffix = _refuse("suffix", unless=(None, ""))


# What each unsupported OpenAI chat field may be: its default, or a value that asks for
# nothing (no tools, plain text). Anything else is a 400 naming the field.
_CHAT_DEFAULTS = {
    "tools": (None, []), "functions": (None, []),
    "tool_choice": (None, "none", "auto"), "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True), "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,),
    "reasoning_effort": (None,), "verbosity": (None, "medium"), "web_search_options": (None,),
    "store": (None, False), "metadata": (None, {}), "service_tier": (None, "auto", "default"),
}


class ChatMessage(pydantic.BaseModel):
  role: str
  content: str


class ChatCompletionRequest(_Sampling):
  messages: list[ChatMessage] = pydantic.Field(min_length=1)
  max_tokens: int | None = pydantic.Field(None, ge=1, le=MAX_TOKENS)
  max_completion_tokens: int | None = pydantic.Field(None, ge=1, le=MAX_TOKENS)
  logprobs: bool | None = _Unsupported
  top_logprobs: int | None = _Unsupported
  # OpenAI chat fields this server does not implement: each is refused unless left at
  # its OpenAI default (tool calling, structured output, audio, stored completions, ...)
  tools: list[dict[str, Any]] | None = _Unsupported
  tool_choice: str | dict[str, Any] | None = _Unsupported
  parallel_tool_calls: bool | None = _Unsupported
  functions: list[dict[str, Any]] | None = _Unsupported
  function_call: str | dict[str, Any] | None = _Unsupported
  response_format: dict[str, Any] | None = _Unsupported
  audio: dict[str, Any] | None = _Unsupported
  modalities: list[str] | None = _Unsupported
  prediction: dict[str, Any] | None = _Unsupported
  reasoning_effort: str | None = _Unsupported
  verbosity: str | None = _Unsupported
  web_search_options: dict[str, Any] | None = _Unsupported
  store: bool | None = _Unsupported
  metadata: dict[str, str] | None = _Unsupported
  service_tier: str | None = _Unsupported
  # labels that change nothing in the output: accepted and ignored, as `user`
  safety_identifier: str | None = None
  prompt_cache_key: str | None = None

  _check_logprobs = _refuse("logprobs", unless=(None, False),
                            hint="is not supported on chat completions (use /v1/completions)")
  _check_top_logprobs = _refuse("top_logprobs", unless=(None, 0),
                                hint="is not supported on chat completions (use /v1/completions)")
  _check_openai_defaults = _refuse(*_CHAT_DEFAULTS, unless=_CHAT_DEFAULTS)


class Usage(pydantic.BaseModel):
  prompt_tokens: int
  completion_tokens: int
  total_tokens: int


class Logprobs(pydantic.BaseModel):
  tokens: list[str]
  token_logprobs: list[float | None]
  top_logprobs: list[dict[str, float] | None]
  text_offset: list[int]


class CompletionChoice(pydantic.BaseModel):
  index: int
  text: str
  logprobs: Logprobs | None = None
  finish_reason: Literal["stop", "length", "error"] | None = None


class CompletionResponse(pydantic.BaseModel):
  id: str
  object: Literal["text_completion"] = "text_completion"
  created: int
  model: str
  choices: list[CompletionChoice]
  usage: Usage | None = None


class ChatChoiceMessage(pydantic.BaseModel):
  role: Literal["assistant"] = "assistant"
  content: str


class ChatChoice(pydantic.BaseModel):
  index: int
  message: ChatChoiceMessage
  finish_reason: Literal["stop", "length", "error"] | None = None


class ChatCompletionResponse(pydantic.BaseModel):
  id: str
  object: Literal["chat.completion"] = "chat.completion"
  created: int
  model: str
  choices: list[ChatChoice]
  usage: Usage


class ModelCard(pydantic.BaseModel):
  id: str
  object: Literal["model"] = "model"
  created: int
  owned_by: str = "treadle"


class ModelList(pydantic.BaseModel):
  object: Literal["list"] = "list"
  data: list[ModelCard]


class Health(pydantic.BaseModel):
  status: Literal["ok", "draining"]
  model: str
  step: int
  running: int
  queued: int
  max_batch: int
  max_queue: int


class ErrorDetail(pydantic.BaseModel):
  message: str
  type: str
  param: str | None = None
  code: str | None = None


class ErrorResponse(pydantic.BaseModel):
  error: ErrorDetail
