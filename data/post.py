"""Post-training data: JSONL rows -> token arrays with loss masks, split by rows, batched by
Grain.

Row forms (docs/post-training.md):
  sft   {"prompt": str, "completion": str} | {"messages": [{"role", "content"}, ...]}
  dpo   {"prompt": str, "chosen": str, "rejected": str}
        | {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
  grpo  {"prompt": str, ...} | {"messages": [...], ...}: every field reaches the reward
Messages are rendered with the model's chat template as Hugging Face renders them; the loss
covers the assistant turns only (the text each adds to the conversation before it).
"""
import dataclasses
import json
import logging
import math
import pathlib
import sys

import grain
import numpy as np

from treadle.configs import base
from treadle.data import chat

log = logging.getLogger("treadle")


@dataclasses.dataclass(frozen=True)
class SftDataConfig:
  """data.* of task=sft: keys, base values and meanings in configs/base.py."""
  path: str
  seq_len: int
  packing: bool
  val_fraction: float
  test_fraction: float
  split_seed: int

  def __post_init__(self):
    base.check_fields("data", "sft", self)


@dataclasses.dataclass(frozen=True)
class DpoDataConfig:
  """data.* of task=dpo: keys, base values and meanings in configs/base.py."""
  path: str
  seq_len: int
  val_fraction: float
  test_fraction: float
  split_seed: int

  def __post_init__(self):
    base.check_fields("data", "dpo", self)


@dataclasses.dataclass(frozen=True)
class GrpoDataConfig:
  """data.* of task=grpo (the prompts file is rl.prompts): configs/base.py."""
  val_fraction: float
  test_fraction: float
  split_seed: int

  def __post_init__(self):
    base.check_fields("data", "grpo", self)


# -- reading ---------------------------------------------------------------------------------

def read_jsonl(path: str, key: str) -> list[dict]:
  """The JSON objects of a JSONL file, one per non-blank line; a bad line is a one-line
  ValueError naming `key`, the file and the line."""
  if not path:
    raise ValueError(f"{key} is required: a JSONL file of rows (docs/post-training.md)")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"{key}={path!r}: no such file")
  rows = []
  with open(file, encoding="utf-8", errors="strict") as f:
    try:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
          raise ValueError(f"{path}:{number}: a row must be a JSON object")
        rows.append((number, row))
    except UnicodeDecodeError:
      raise ValueError(f"{path}: not UTF-8 text") from None
  if not rows:
    raise ValueError(f"{key}={path!r} holds no rows")
  return rows


def _text(row: dict, field: str, where: str) -> str:
  value = row.get(field)
  if not isinstance(value, str) or not value:
    raise ValueError(f"{where}: field {field!r} must be a non-empty string")
  return value


def _messages(value, field: str, where: str) -> list[dict]:
  if isinstance(value, dict):
    value = [value]
  if not (isinstance(value, list) and value and all(
      isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
      for m in value)):
    raise ValueError(f"{where}: field {field!r} must be a list of "
                     '{"role": str, "content": str} messages')
  return value


class Renderer:
  """Text of conversations with the model's chat template, and token segments."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.has_template = chat.template(tokenizer) is not None

  def check_template(self, where: str) -> None:
    if not self.has_template:
      raise ValueError(f"{where}: a messages row needs a chat template and the model's "
                       "tokenizer has none (use prompt/completion rows)")

  def render(self, messages: list[dict], generation_prompt: bool, where: str) -> str:
    self.check_template(where)
    try:
      return chat.render(self.tokenizer, messages, generation_prompt)
    except chat.ChatTemplateError as e:
      raise ValueError(f"{where}: {e}") from None

  def encode(self, text: str, where: str) -> np.ndarray:
    try:
      return np.asarray(self.tokenizer.encode(text), np.int32)
    except ValueError as e:  # a character outside a char tokenizer's vocabulary
      raise ValueError(f"{where}: {e}") from None

  def segments(self, pieces: list[tuple[str, bool]], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of text pieces each encoded on its own, mask 1 on the pieces marked True."""
    ids, mask = [], []
    for text, learned in pieces:
      piece = self.encode(text, where) if text else np.zeros(0, np.int32)
      ids.append(piece)
      mask.append(np.full(len(piece), learned, np.int32))
    return np.concatenate(ids), np.concatenate(mask)

  def end(self) -> list[int]:
    """The end-of-sequence id appended to plain completions, so generation learns to stop."""
    eot = getattr(self.tokenizer, "eot_id", None)
    return [] if eot is None else [int(eot)]

  def chat_pieces(self, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """The conversation as (text, is an assistant turn) pieces whose join is its rendering."""
    self.check_template(where)
    pieces, done = [], ""
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      before = self.render(messages[:i], True, where) if i else ""
      through = self.render(messages[:i + 1], False, where)
      if not (before.startswith(done) and through.startswith(before)):
        raise ValueError(f"{where}: the chat template does not render the conversation as a "
                         "prefix of its continuation; use prompt/completion rows")
      pieces += [(before[len(done):], False), (through[len(before):], True)]
      done = through
    if not pieces:
      raise ValueError(f"{where}: a messages row needs at least one assistant message")
    return pieces


# -- rows -> token arrays ----------------------------------------------------------------------

def sft_example(renderer: Renderer, row: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
  """(ids, loss mask over ids): the mask is 1 on the completion / assistant tokens."""
  if "messages" in row:
    messages = _messages(row["messages"], "messages", where)
    return renderer.segments(renderer.chat_pieces(messages, where), where)
  prompt, completion = _text(row, "prompt", where), _text(row, "completion", where)
  ids, mask = renderer.segments([(prompt, False), (completion, True)], where)
  end = renderer.end()
  return np.concatenate([ids, end]).astype(np.int32), np.concatenate([mask, [1] * len(end)])


def preference_example(renderer: Renderer, row: dict, where: str):
  """(prompt ids, chosen ids, rejected ids) of a dpo row; answers end with the eos id."""
  if isinstance(row.get("prompt"), list):
    context = _messages(row["prompt"], "prompt", where)
    prompt = renderer.render(context, True, where)
    answers = []
    for field in ("chosen", "rejected"):
      whole = renderer.render(context + _messages(row.get(field), field, where), False, where)
      if not whole.startswith(prompt):
        raise ValueError(f"{where}: the chat template does not render the prompt as a prefix")
      answers.append(renderer.encode(whole[len(prompt):], where))
  else:
    prompt = _text(row, "prompt", where)
    answers = [np.concatenate([renderer.encode(_text(row, f, where), where), renderer.end()])
               .astype(np.int32) for f in ("chosen", "rejected")]
  return renderer.encode(prompt, where), answers[0], answers[1]


def prompt_text(renderer: Renderer, row: dict, where: str) -> str:
  """A grpo row's prompt as the model reads it (messages rendered with a generation prompt)."""
  if "messages" in row:
    return renderer.render(_messages(row["messages"], "messages", where), True, where)
  return _text(row, "prompt", where)


# -- splits and batches ---------------------------------------------------------------------

def split_rows(count: int, val_fraction: float, test_fraction: float, seed: int, what: str):
  """Shuffled row indices (train, val, test); val and test hold at least one row each."""
  n_val, n_test = (max(1, math.floor(count * f)) for f in (val_fraction, test_fraction))
  if count - n_val - n_test < 1:
    raise ValueError(f"{what}: {count} usable rows are too few to hold out {n_val} for "
                     f"validation and {n_test} for test")
  order = np.random.default_rng(seed).permutation(count)
  return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def take(arrays: dict, rows) -> dict:
  return {k: v[rows] for k, v in arrays.items()}


def report_skipped(what: str, skipped: int, total: int, reason: str) -> None:
  if skipped:
    log.warning("%s: %d of %d rows skipped: %s", what, skipped, total, reason)


class RowBatches:
  """Grain random-access source: item b = this process's rows of global batch b, epochs
  reshuffled with the seed (the iterator's position is what a checkpoint keeps)."""

  def __init__(self, arrays: dict, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    if global_batch % process_count:
      raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
    local = global_batch // process_count
    self._arrays, self._global_batch = arrays, global_batch
    self._rows = np.arange(process_index * local, (process_index + 1) * local)
    count = len(next(iter(arrays.values())))
    self._order = grain.MapDataset.range(count).shuffle(seed).repeat(None)

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index: int) -> dict:
    rows = [self._order[int(r)] for r in index * self._global_batch + self._rows]
    return take(self._arrays, np.asarray(rows, np.int64))


def train_iterator(arrays: dict, global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  source = RowBatches(arrays, global_batch, seed, process_index, process_count)
  return iter(grain.MapDataset.source(source).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def fixed_batches(arrays: dict, global_batch: int, num_batches: int, process_index: int = 0,
                  process_count: int = 1) -> list[dict]:
  """Every row once (num_batches 0) or the first num_batches batches, in order; the last
  batch is filled with copies of row 0 whose "weights" are 0 (counted nowhere)."""
  count = len(next(iter(arrays.values())))
  batches = -(-count // global_batch)
  if num_batches:
    batches = min(batches, num_batches)
  local = global_batch // process_count
  out = []
  for b in range(batches):
    rows = b * global_batch + process_index * local + np.arange(local)
    real = rows < count
    batch = take(arrays, np.where(real, rows, 0))
    batch["weights"] = real.astype(np.float32)
    out.append(batch)
  return out


def right_pad(sequences: list[np.ndarray], length: int, value: int = 0) -> np.ndarray:
  out = np.full((len(sequences), length), value, np.int32)
  for i, s in enumerate(sequences):
    out[i, :len(s)] = s
  return out
