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
TOP_LOGPROBS = 20      # = slots.TOP_LOGPROBS (kept here so the schema imports no jax)

_Unsupported = pydantic.Field(None, description="Not supported: leave unset.")


def _refuse(*fields: str, unless=(None,), hint: str = ""):
  """A validator that refuses an unsupported field set to anything but its OpenAI default
  (`unless`), naming the field; the accepted default is dropped (None)."""
  def check(cls, value, info):
    del cls
    if value not in unless:
      raise ValueError(f"{info.field_name} {hint or 'is not supported by this server'}")
    return None
  return pydantic.field_validator(*fields)(classmethod(check))


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
  stream_options: dict[str, Any] | None = None
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
    return stops

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


class ChatMessage(pydantic.BaseModel):
  role: str
  content: str


class ChatCompletionRequest(_Sampling):
  messages: list[ChatMessage] = pydantic.Field(min_length=1)
  max_tokens: int | None = pydantic.Field(None, ge=1, le=MAX_TOKENS)
  max_completion_tokens: int | None = pydantic.Field(None, ge=1, le=MAX_TOKENS)
  logprobs: bool | None = _Unsupported

  _check_logprobs = _refuse("logprobs", unless=(None, False),
                            hint="is not supported on chat completions (use /v1/completions)")


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
