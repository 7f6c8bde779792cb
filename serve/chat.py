"""Chat messages to one prompt through the tokenizer's chat template (if it has one).

treadle's own tokenizers (char, byte, bpe) carry no template: `chat_template` is absent or
None and chat requests are refused. A tokenizer imported from a Hugging Face model may
carry one, as `chat_template` (the Jinja source) and optionally `apply_chat_template`.
"""
import functools


def template(tokenizer) -> str | None:
  return getattr(tokenizer, "chat_template", None) or None


def render(tokenizer, messages: list[dict]) -> str | None:
  """The prompt for `messages` ending where the assistant's reply starts; None without a
  template."""
  source = template(tokenizer)
  if source is None:
    return None
  apply = getattr(tokenizer, "apply_chat_template", None)
  if apply is not None:
    return apply(messages, add_generation_prompt=True)
  special = {name: getattr(tokenizer, name, "") or "" for name in ("bos_token", "eos_token")}
  return _compile(source).render(messages=messages, add_generation_prompt=True, **special)


@functools.lru_cache(maxsize=4)
def _compile(source: str):
  # Hugging Face renders chat templates with a sandboxed Jinja environment, these options
  from jinja2 import sandbox
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  return env.from_string(source)
