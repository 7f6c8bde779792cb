"""Generated token ids to text as they arrive, and when a sequence ends.

One implementation for every decoder of treadle (treadle-sample, `Sampler.generate` and
`stream`, the server's slots): a completion's text is what its ids add to the prompt's,
`decode(prompt + generated)` minus `decode(prompt)`, with special tokens skipped. Decoding
the new ids alone is wrong for real tokenizers: a SentencePiece-style (Metaspace) decoder
drops the space that starts the first token it sees, so "▁king" decoded on its own loses
the space between words; byte-level ids of one character split over tokens decode to
U+FFFD until the last byte arrives.

Each new id decodes together with a few ids before it (the window from `_prefix` to the
end): what the window's text adds past the text of its older ids is the new text, sent
once it no longer ends in U+FFFD (a character whose other bytes are still to come).
"""
from typing import Iterable, Sequence

import numpy as np

_CONTEXT = 6  # prompt ids decoded before the first new one (a decoder's view of a word start)


def special_ids(tokenizer) -> frozenset[int]:
  """Ids whose text a reader never sees (skip_special_tokens): an imported tokenizer's
  special added tokens, treadle's end-of-text id."""
  hf_tokenizer = getattr(tokenizer, "hf_tokenizer", None)
  ids = set()
  if hf_tokenizer is not None:
    ids |= {i for i, t in hf_tokenizer.get_added_tokens_decoder().items() if t.special}
  eot = getattr(tokenizer, "eot_id", None)
  if eot is not None:
    ids.add(int(eot))
  return frozenset(ids)


class TextStream:
  """One sequence's text and end: feed it each generated id with `add`.

  It ends ("stop") at an id in `stop_ids` (the model's end-of-sequence ids; its text is not
  part of the output) or at a stop string (the text is cut before it), and ("length") after
  `max_tokens` ids. `text` is the text so far; `safe_length()` how much of it can be sent
  before the end (an ending that could still grow into a stop string is held back).
  """

  def __init__(self, tokenizer, prompt_ids: Sequence[int], max_tokens: int,
               stop: Iterable[str] = (), stop_ids: Iterable[int] = (),
               skip_special_tokens: bool = True):
    self.tokenizer = tokenizer
    self.max_tokens = max_tokens
    self.stop = [s for s in stop if s]
    self._longest_stop = max((len(s) for s in self.stop), default=0)
    self.stop_ids = frozenset(int(i) for i in stop_ids)
    self._hidden = special_ids(tokenizer) if skip_special_tokens else frozenset()
    # the decoding window: ids [_prefix, _read) are sent, [_read, ...) not yet
    self._ids = self._shown(prompt_ids)[-_CONTEXT:]
    self._prefix, self._read = 0, len(self._ids)
    self.text = ""
    self.generated = 0
    self.finish_reason: str | None = None  # "stop" | "length" once ended

  @property
  def done(self) -> bool:
    return self.finish_reason is not None

  def _shown(self, ids) -> list[int]:
    return [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in self._hidden]

  def _decode(self, ids: list[int]) -> str:
    return self.tokenizer.decode(np.asarray(ids, np.int32)) if ids else ""

  def add(self, token_id: int) -> bool:
    """Takes the next generated id; True once the sequence has ended (later ids are
    ignored)."""
    if self.done:
      return True
    self.generated += 1
    token_id = int(token_id)
    if token_id in self.stop_ids:
      self._end("stop")
      return True
    if token_id not in self._hidden:
      self._ids.append(token_id)
      self._advance(final=False)
    if not self.done and self.generated >= self.max_tokens:
      self._end("length")
    return self.done

  def add_all(self, token_ids) -> bool:
    """`add`s the ids in turn until the sequence ends; True once it has."""
    for token_id in token_ids:
      if self.add(token_id):
        break
    return self.done

  def _end(self, reason: str) -> None:
    self._advance(final=True)  # what is pending, even mid character
    self.finish_reason = self.finish_reason or reason

  def _advance(self, final: bool) -> None:
    """Sends what the unsent ids add to the window's sent ids, once it is whole text."""
    if self.done or self._read == len(self._ids):
      return
    sent = self._decode(self._ids[self._prefix:self._read])
    window = self._decode(self._ids[self._prefix:])
    if not final and (len(window) <= len(sent) or window.endswith("\ufffd")):
      return  # nothing new yet, or a character whose other bytes are still to come
    self._append(window[len(sent):])
    # the next window starts at the ids this text came from (their decoder context)
    sent_from = self._prefix
    self._ids = self._ids[sent_from:]
    self._prefix, self._read = self._read - sent_from, len(self._ids)

  def _append(self, piece: str) -> None:
    # a stop string may straddle the old text and the new piece
    start = max(0, len(self.text) - self._longest_stop)
    self.text += piece
    cuts = [c for c in (self.text.find(s, start) for s in self.stop) if c >= 0]
    if cuts:
      self.text = self.text[:min(cuts)]
      self.finish_reason = "stop"

  def safe_length(self) -> int:
    """How much of `text` can be sent now: all of it once ended, else all but an ending
    that could still grow into a stop string."""
    if self.done:
      return len(self.text)
    held = 0
    for s in self.stop:
      for k in range(min(len(s) - 1, len(self.text)), held, -1):
        if self.text.endswith(s[:k]):
          held = k
          break
    return len(self.text) - held


def completion_text(tokenizer, prompt_ids, generated_ids, max_tokens: int, stop=(),
                    stop_ids=(), skip_special_tokens: bool = True) -> TextStream:
  """The finished stream of a whole generated sequence (what streaming it sends in all)."""
  stream = TextStream(tokenizer, prompt_ids, max_tokens, stop, stop_ids, skip_special_tokens)
  stream.add_all(generated_ids)
  return stream
