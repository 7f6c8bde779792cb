"""Token ids to text as they arrive: stop strings, and what is safe to send before the end."""
from typing import Sequence


class TextStream:
  """Decodes generated ids incrementally and finds stop strings.

  Ids decode in runs ending at a clean character boundary: a byte-level tokenizer's run
  that ends mid character (a trailing U+FFFD) waits for the next id, so decoding in pieces
  gives the text decoding all ids at once gives.
  """

  def __init__(self, tokenizer, stop: Sequence[str]):
    self.tokenizer = tokenizer
    self.stop = [s for s in stop if s]
    self.text = ""          # decoded so far (clean runs only)
    self._pending: list[int] = []
    self.stopped = False    # a stop string appeared; `text` is cut before it

  def add(self, token_id: int) -> None:
    self._pending.append(token_id)
    piece = self.tokenizer.decode(self._pending)
    if piece.endswith("\ufffd"):
      return
    self._pending = []
    self._append(piece)

  def finish(self) -> None:
    """The last ids: decode what is pending even if it ends mid character."""
    if self._pending and not self.stopped:
      self._append(self.tokenizer.decode(self._pending))
    self._pending = []

  def _append(self, piece: str) -> None:
    if self.stopped:
      return
    # a stop string may straddle the old text and the new piece
    start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
    self.text += piece
    cuts = [self.text.find(s, start) for s in self.stop]
    cuts = [c for c in cuts if c >= 0]
    if cuts:
      self.text = self.text[:min(cuts)]
      self.stopped = True

  def safe_length(self) -> int:
    """How much of `text` can be sent now: all of it except an ending that could still
    grow into a stop string."""
    if self.stopped:
      return len(self.text)
    held = 0
    for s in self.stop:
      for k in range(min(len(s) - 1, len(self.text)), held, -1):
        if self.text.endswith(s[:k]):
          held = k
          break
    return len(self.text) - held
