"""Chat messages -> one prompt, rendered as transformers' `apply_chat_template` renders it.

The same sandboxed Jinja environment (trim_blocks, lstrip_blocks, loop controls, the
`generation` tag), HF's `tojson`, `raise_exception`, `strftime_now`, `dict` and `namespace`,
and the same variables: `messages` (keys whose value is null dropped, reasoning aliased),
`tools` and `documents` (None), `add_generation_prompt`, and every special token of the
tokenizer's `tokenizer_config.json` by name (`bos_token`, `eos_token`, ... and a model's own
`*_token` keys) as HF's `special_tokens_map` passes them. So an imported Llama's prompt
starts with its `bos_token`, as transformers' does.

treadle's own tokenizers (char, byte, bpe) carry no template: `render` returns None. An
imported model's tokenizer (`tokenizers.HfTokenizer`) carries `chat_template` (the source)
and `tokenizer_config`. Nothing here imports train/, infer/ or serve/: the trainer renders
chats with it too.
"""
import datetime
import functools
import json
from typing import Any

import numpy as np

from treadle.data import tokenizers

# HF's SPECIAL_TOKENS_ATTRIBUTES: the named special tokens every tokenizer may have
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token")
# names a message's reasoning goes by; templates read the first (as transformers aliases them)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
  """A chat template refused the messages (its `raise_exception(message)`) or failed on them;
  the message is the template's own. The server answers it with a 400."""


def template(tokenizer) -> str | None:
  """The tokenizer's template source; of HF's named templates (a list of {"name",
  "template"} or a dict), the one named "default" (the importer resolves it already)."""
  source = getattr(tokenizer, "chat_template", None)
  if isinstance(source, list):
    source = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
  if isinstance(source, dict):
    source = source.get("default")
  return source if isinstance(source, str) and source else None


def special_tokens(tokenizer_config: dict) -> dict[str, str]:
  """HF's `special_tokens_map` of a tokenizer_config.json: each named special token and each
  other `*_token` key (or `extra_special_tokens` entry given by name), as its text; a token
  may be a string or an AddedToken object {"content": ...}."""
  out = {}
  for key, value in tokenizer_config.items():
    if key in NAMED_TOKENS or key.endswith("_token"):
      out[key] = tokenizers.special_token_text(value)
  extra = tokenizer_config.get("extra_special_tokens")
  if extra is None:
    extra = tokenizer_config.get("additional_special_tokens")  # its name before v5
  if isinstance(extra, dict):  # named model-specific tokens (a list is unnamed: not passed)
    out.update({k: tokenizers.special_token_text(v) for k, v in extra.items()})
  return {k: v for k, v in out.items() if v is not None}


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str | None:
  """The prompt for `messages`, ending where the assistant's reply starts when
  `add_generation_prompt`; None without a template. Raises ChatTemplateError when the template
  raises or fails on these messages."""
  source = template(tokenizer)
  if source is None:
    return None
  if not messages:
    raise ChatTemplateError("a chat needs at least one message")
  variables = special_tokens(getattr(tokenizer, "tokenizer_config", None) or {})
  return render_template(source, messages, add_generation_prompt, **variables)


def render_template(source: str, messages: list[dict], add_generation_prompt: bool = True,
                    **variables) -> str:
  """`source` rendered over `messages` with `variables` (special tokens), as HF renders it."""
  jinja2 = _jinja2()
  try:
    return _compile(source).render(messages=_messages(messages), tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt,
                                   **_plain(variables))
  except ChatTemplateError:
    raise
  except (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as e:
    # the template is untrusted code run on the client's messages: its failure on them is
    # the request's problem, named, not a server error
    raise ChatTemplateError(f"the chat template failed on these messages: "
                            f"{type(e).__name__}: {e}") from None


def _messages(messages: list[dict]) -> list[dict]:
  """As transformers passes them: plain JSON data, keys whose value is null dropped (OpenAI
  clients send `"content": null`), reasoning copied under the names templates read."""
  out = []
  for message in _plain(list(messages)):
    if not isinstance(message, dict):
      raise ChatTemplateError(f"a chat message must be an object, got {message!r}")
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is not None:
      message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    out.append(message)
  return out


def _plain(value: Any) -> Any:
  """A fresh copy built of JSON types only: the sandbox cannot reach a caller's objects'
  methods, and the template cannot change the caller's messages."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):  # subclasses (enums, numpy strings) carry extra methods
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, np.generic):  # np.bool_(False) would be a truthy placeholder
    return _plain(value.item())
  if isinstance(value, dict):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if callable(getattr(value, "model_dump", None)):  # pydantic messages (the server's)
    return _plain(value.model_dump())
  return f"<{type(value).__name__}>"  # anything else is an inert placeholder, as in HF


def _jinja2():
  try:
    import jinja2
  except ImportError:  # a dependency since chat post-training; an older install may lack it
    raise ImportError("rendering a chat template needs jinja2>=3.1.6 "
                      "(pip install 'jinja2>=3.1.6')") from None
  return jinja2


@functools.lru_cache(maxsize=8)
def _compile(source: str):
  jinja2 = _jinja2()
  try:
    return _environment().from_string(source)
  except jinja2.TemplateError as e:  # a syntax error: the model's template, named
    raise ChatTemplateError(f"the chat template does not compile: {e}") from None


@functools.lru_cache(maxsize=1)
def _environment():
  """transformers' environment (utils/chat_template_utils.py), without its assistant-mask
  tracking: the `generation` tag renders its body."""
  jinja2 = _jinja2()
  from jinja2 import ext
  from jinja2 import nodes
  from jinja2 import sandbox

  class Generation(ext.Extension):
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[Generation, ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                     dict=_TemplateDict(), namespace=_namespace_class(jinja2))
  return env


def _raise_exception(message):
  raise ChatTemplateError(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # HF's: Jinja's own tojson escapes HTML characters ('<' -> \u003c), which changes prompts
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(format):
  return datetime.datetime.now().strftime(format)


class _TemplateDict:
  """`dict(...)` for templates, without the type's attributes (no way out of the sandbox)."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


def _namespace_class(jinja2):
  """Jinja's `namespace`, refusing underscore names (CPython internals), as transformers'."""

  def check(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
          f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got "
          f"{name!r}. Please rename the attribute.")

  class TemplateNamespace(jinja2.utils.Namespace):
    def __init__(*args, **kwargs):  # Jinja's signature trick: `namespace(self=...)` works
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for name in attrs:
        check(name)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      check(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

  return TemplateNamespace
