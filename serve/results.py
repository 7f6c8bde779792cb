"""Engine events to OpenAI response bodies: whole responses, stream chunks, logprobs, usage."""
import dataclasses

from treadle.serve import engine as engine_lib
from treadle.serve import schemas


@dataclasses.dataclass
class _Choice:
  text: str = ""
  tokens: list[engine_lib.Token] = dataclasses.field(default_factory=list)
  prompt: list[engine_lib.Token] | None = None
  finish_reason: str | None = None
  started: bool = False  # a stream chunk of this choice was sent


class CompletionBuilder:
  """Accumulates one request's events; choice i continues prompt i // n."""

  def __init__(self, tokenizer, prompts: list[list[int]], n: int, echo: bool,
               logprobs: bool):
    self.tokenizer, self.prompts, self.n = tokenizer, prompts, n
    self.echo, self.logprobs = echo, logprobs
    self._choices = [_Choice() for _ in range(len(prompts) * n)]
    self._piece_cache: dict[int, str] = {}

  def _piece(self, token_id: int) -> str:
    if token_id not in self._piece_cache:
      self._piece_cache[token_id] = self.tokenizer.decode([token_id])
    return self._piece_cache[token_id]

  def _prompt_text(self, index: int) -> str:
    return self.tokenizer.decode(self.prompts[index // self.n])

  def add(self, event: engine_lib.Event) -> None:
    choice = self._choices[event.index]
    choice.text += event.text
    choice.tokens += event.tokens
    if event.prompt is not None:
      choice.prompt = event.prompt
    if event.finish_reason is not None:
      choice.finish_reason = event.finish_reason

  # -- logprobs ---------------------------------------------------------------------------

  def _logprobs(self, index: int, tokens, prompt, offset: int) -> schemas.Logprobs:
    """Token strings, their logprobs, top alternatives and character offsets; with echo,
    the prompt's tokens first (the first one has no logprob: nothing precedes it)."""
    ids, lps, tops = [], [], []
    if prompt is not None:
      ids.append(self.prompts[index // self.n][0])
      lps.append(None)
      tops.append(None)
      for t in prompt:
        ids.append(t.id)
        lps.append(t.logprob)
        tops.append(self._top(t))
    for t in tokens:
      ids.append(t.id)
      lps.append(t.logprob)
      tops.append(self._top(t))
    pieces = [self._piece(i) for i in ids]
    offsets = []
    for piece in pieces:
      offsets.append(offset)
      offset += len(piece)
    return schemas.Logprobs(tokens=pieces, token_logprobs=lps, top_logprobs=tops,
                            text_offset=offsets)

  def _top(self, token: engine_lib.Token) -> dict[str, float]:
    top = {self._piece(i): lp for i, lp in token.top}
    top.setdefault(self._piece(token.id), token.logprob)  # OpenAI includes the chosen token
    return top

  # -- whole responses --------------------------------------------------------------------

  def choices(self) -> list[schemas.CompletionChoice]:
    out = []
    for index, c in enumerate(self._choices):
      prefix = self._prompt_text(index) if self.echo else ""
      logprobs = (self._logprobs(index, c.tokens, c.prompt if self.echo else None, 0)
                  if self.logprobs else None)
      out.append(schemas.CompletionChoice(index=index, text=prefix + c.text, logprobs=logprobs,
                                          finish_reason=c.finish_reason))
    return out

  def chat_choices(self) -> list[schemas.ChatChoice]:
    return [schemas.ChatChoice(index=i, message=schemas.ChatChoiceMessage(content=c.text),
                               finish_reason=c.finish_reason)
            for i, c in enumerate(self._choices)]

  def usage(self) -> schemas.Usage:
    prompt = sum(len(p) for p in self.prompts)
    completion = sum(len(c.tokens) for c in self._choices)
    return schemas.Usage(prompt_tokens=prompt, completion_tokens=completion,
                         total_tokens=prompt + completion)

  # -- stream chunks ----------------------------------------------------------------------

  def chunk(self, event: engine_lib.Event, meta: dict) -> dict:
    """A text_completion chunk; with echo, the first chunk of a choice carries the prompt."""
    choice = self._choices[event.index]
    first, choice.started = not choice.started, True
    prefix = self._prompt_text(event.index) if self.echo and first else ""
    offset = len(self._prompt_text(event.index)) if self.echo else 0
    offset += len(choice.text)
    self.add(event)
    logprobs = None
    if self.logprobs:
      prompt = event.prompt if self.echo and first else None
      logprobs = self._logprobs(event.index, event.tokens, prompt,
                                0 if prompt is not None else offset).model_dump()
    return {**meta, "object": "text_completion",
            "choices": [{"index": event.index, "text": prefix + event.text,
                         "logprobs": logprobs, "finish_reason": event.finish_reason}]}

  def chat_chunk(self, event: engine_lib.Event, meta: dict) -> dict:
    choice = self._choices[event.index]
    first, choice.started = not choice.started, True
    self.add(event)
    delta = {"role": "assistant", "content": event.text} if first else {"content": event.text}
    return {**meta, "object": "chat.completion.chunk",
            "choices": [{"index": event.index, "delta": delta,
                         "finish_reason": event.finish_reason}]}

  def usage_chunk(self, meta: dict, chat: bool = False) -> dict:
    """The last chunk: no choices, the whole request's token counts (OpenAI's
    stream_options.include_usage chunk, sent always)."""
    return {**meta, "object": "chat.completion.chunk" if chat else "text_completion",
            "choices": [], "usage": self.usage().model_dump()}
