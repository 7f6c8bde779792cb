"""Continuous batching: one thread runs one decode loop over a fixed set of slots.

A request waits in a bounded queue, is prefilled into the first free slot, joins the
running batch at its next step and leaves the moment it finishes (length, stop string,
or its client gone); the others never wait for it. Results go back to the asyncio side
through `Sequence.emit`, which is thread-safe.
"""
import collections
import dataclasses
import logging
import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from treadle.data import streaming
from treadle.infer import sampler as sampler_lib
from treadle.model import decode
from treadle.model import slots as slots_lib


class CacheTooLarge(ValueError):
  """The slots' KV caches would exceed the memory allowed them."""


def buckets(max_batch: int) -> list[int]:
  """Step sizes compiled at warm-up: 1, 2, 4, ... and max_batch itself."""
  sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
  return sizes + [max_batch]


def cache_bytes(sampler: sampler_lib.Sampler, num_slots: int, cache_len: int) -> int:
  """Bytes of `num_slots` KV caches of `cache_len` tokens (computed without allocating)."""
  model = decode.merge(sampler.graphdef, sampler.params)
  shapes = jax.eval_shape(lambda: model.init_cache(num_slots, cache_len))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


class QueueFull(Exception):
  """More requests than the slots and the queue hold."""


@dataclasses.dataclass
class Token:
  id: int
  logprob: float
  top: list[tuple[int, float]]  # the `top_n` most likely (id, logprob); empty if top_n is 0


@dataclasses.dataclass
class Event:
  """What one sequence produced since its last event."""
  index: int                     # the sequence's choice index in its request
  text: str = ""                 # new text safe to send
  tokens: list[Token] = dataclasses.field(default_factory=list)
  prompt: list[Token] | None = None   # echo: prompt tokens 1.. scored (first event only)
  finish_reason: str | None = None    # "length" | "stop" when done


@dataclasses.dataclass(eq=False)
class Sequence:
  """One completion choice: a tokenized prompt and how to continue it."""
  index: int
  prompt_ids: list[int]
  max_tokens: int               # 0: score the prompt only (echo)
  temperature: float
  top_k: int
  top_p: float
  seed: int
  row: int                      # row key: decode.row_keys(key(seed), ..., first_row=row)
  stop: list[str]
  top_n: int                    # alternatives per token; 0 = none
  score_prompt: bool            # send the prompt tokens' logprobs
  emit: Callable[[Event], None]
  ignore_eos: bool = False      # run to max_tokens past end-of-sequence ids (benchmarks)
  skip_special_tokens: bool = True
  cancelled: bool = False
  # filled by the engine
  history: list[int] = dataclasses.field(default_factory=list)  # absolute slots: pad, prompt, new
  base: int = 0                 # absolute slot held by cache index 0
  pad: int = 0                  # padding slots before the prompt
  sent: int = 0                 # characters of text already emitted
  text: streaming.TextStream | None = None


class Engine:
  """Owns the slots and the loop; `submit` and `cancel` may be called from any thread."""

  def __init__(self, sampler: sampler_lib.Sampler, max_batch: int, max_queue: int,
               max_model_len: int | None = None, max_cache_gib: float = float("inf")):
    """`max_model_len` (default: the model's context, at most 4096) is each slot's cache
    length: its window, and the longest prompt taken. CacheTooLarge, before anything is
    allocated, when max_batch such caches exceed `max_cache_gib`."""
    self.sampler, self.max_batch, self.max_queue = sampler, max_batch, max_queue
    self.window = max_model_len or min(sampler.window, 4096)
    if not 2 <= self.window <= sampler.window:
      raise ValueError(f"--max_model_len={self.window} must be in [2, {sampler.window}] (the "
                       "model's context)")
    self.cache_gib = cache_bytes(sampler, max_batch, self.window) / 2**30
    if self.cache_gib > max_cache_gib:
      raise CacheTooLarge(
          f"the KV cache of {max_batch} slots x {self.window} tokens needs "
          f"{self.cache_gib:.2f} GiB, over --max_cache_gib={max_cache_gib:g}: lower "
          "--max_batch or --max_model_len, or raise --max_cache_gib")
    self.buckets = buckets(max_batch)
    self.vocab_size = sampler.cfg.model.vocab_size
    self.graphdef = sampler.graphdef
    self._lock = threading.Condition()
    self._waiting: collections.deque[Sequence] = collections.deque()
    self._rows: list[Sequence | None] = [None] * max_batch
    self._stopping = False
    self.healthy = True  # False while the slots are rebuilt after a failed step (/health: 503)
    self._thread = threading.Thread(target=self._run, name="treadle-engine", daemon=True)
    self._prefill = jax.jit(self._prefill_fn)  # one slot: compiled per prompt length only
    self._slide = jax.jit(self._slide_fn)
    self._put = jax.jit(slots_lib.put, donate_argnums=0)
    self._put_cache = jax.jit(slots_lib.put_cache, donate_argnums=0)
    self._step = jax.jit(self._step_fn, donate_argnums=0)
    self._move = jax.jit(slots_lib.move, donate_argnums=0)
    # not donated: a buffer of the old size cannot hold the new slots (JAX would warn)
    self._resize = jax.jit(self._resize_fn, static_argnums=2)
    self._empty = jax.jit(self._empty_fn, static_argnums=0)
    self.size = 1  # slots held now: a bucket, grown and shrunk with the live sequences
    self.slots = self._empty(self.size, sampler.params)

  # -- jitted pieces ----------------------------------------------------------------------

  def _model(self, params):
    return decode.merge(self.graphdef, params)

  def _empty_fn(self, num_slots, params):
    return slots_lib.empty(self._model(params), num_slots, self.window)

  def _prefill_fn(self, params, tokens_P, pad, key_data, sampling):
    return slots_lib.prefill(self._model(params), self.window, tokens_P, pad, key_data,
                             sampling)

  def _step_fn(self, slots, params, live_S):
    return slots_lib.step(self._model(params), slots, live_S)

  def _slide_fn(self, params, prefix_K, pad, base):
    return slots_lib.slide(self._model(params), self.window, prefix_K, pad, base)

  def _resize_fn(self, slots, params, size: int):
    return slots_lib.resize(self._model(params), slots, size)

  def warm_up(self) -> None:
    """Compiles, for every bucket size, the step, the slide, the put and the move, the
    resizes between neighbouring buckets, and the prefill of the shortest prompt bucket,
    on idle slots (what they leave behind is overwritten by the next prefill)."""
    self._warm_up_buckets(*self._warm_up_puts())

  def _warm_up_puts(self) -> list:
    """A prefilled slot and a slid cache, each as a put (slots -> slots) into slot 0."""
    P = sampler_lib.prompt_slots(1, self.window)
    greedy = decode.SamplingParams(jnp.float32(0), jnp.int32(0), jnp.float32(1))
    zero = jnp.int32(0)
    params = self.sampler.params
    slot, _ = self._prefill(params, jnp.zeros((P,), jnp.int32), zero,
                            jax.random.key_data(jax.random.key(0)), greedy)
    cache = self._slide(params, jnp.zeros((self.window // 2,), jnp.int32), zero, zero)
    return [lambda slots: self._put(slots, zero, slot),
            lambda slots: self._put_cache(slots, zero, cache, zero)]

  def _warm_up_buckets(self, *puts) -> None:
    """Compiles, at every bucket size, each `put` (slots -> slots), the step and the move."""
    params = self.sampler.params
    for size in self.buckets + self.buckets[-2::-1]:  # up, then down: every neighbour pair
      self._set_size(size)
      for _ in range(2):  # the second pass compiles for the slots' layout after a first step
        for put in puts:
          self.slots = put(self.slots)
        self.slots, _ = self._step(self.slots, params, np.zeros((size,), bool))
        self.slots = self._move(self.slots, jnp.int32(0), jnp.int32(0))
    self._set_size(1)
    jax.block_until_ready(self.slots)

  def _set_size(self, size: int) -> None:
    """Grows or shrinks the slots to `size` through the buckets between (only neighbouring
    buckets' resizes are compiled)."""
    while self.size != size:
      i = self.buckets.index(self.size)
      self.size = self.buckets[i + 1] if size > self.size else self.buckets[i - 1]
      self.slots = self._resize(self.slots, self.sampler.params, self.size)

  # -- thread-safe API --------------------------------------------------------------------

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    with self._lock:
      self._stopping = True
      self._lock.notify()
    self._thread.join()

  def submit(self, seqs: list[Sequence]) -> None:
    """Queues a request's sequences, all or none; QueueFull past max_batch + max_queue."""
    with self._lock:
      busy = len(self._waiting) + sum(r is not None for r in self._rows)
      if busy + len(seqs) > self.max_batch + self.max_queue:
        raise QueueFull(f"{busy} requests in progress or queued; the server holds "
                        f"{self.max_batch} running + {self.max_queue} queued")
      self._waiting.extend(seqs)
      self._lock.notify()

  def cancel(self, seqs: list[Sequence]) -> None:
    """The client is gone: drop queued sequences now, free slots at the next step."""
    with self._lock:
      for seq in seqs:
        seq.cancelled = True
        if seq in self._waiting:
          self._waiting.remove(seq)
      self._lock.notify()

  def load(self) -> dict:
    with self._lock:
      return {"running": sum(r is not None for r in self._rows), "queued": len(self._waiting),
              "max_batch": self.max_batch, "max_queue": self.max_queue}

  # -- the loop ---------------------------------------------------------------------------

  def _run(self) -> None:
    while True:
      with self._lock:
        while not self._stopping and not self._waiting and not any(self._rows):
          self._lock.wait()
        if self._stopping:
          return
      try:
        if not self.healthy:  # the last rebuild failed: try again before using the slots
          self._rebuild()
        self._admit()
        self._free_cancelled()
        self._compact()
        if any(self._rows):
          self._advance()
      except Exception:  # a bug must not leave clients waiting forever
        logging.exception("decode loop failed; failing the running requests")
        self._recover()

  def _recover(self) -> None:
    """Fails the requests in flight and rebuilds the slots (a failed step may have consumed
    them: they are donated); the queued requests run on the new ones. If the rebuild fails
    too, they fail as well, and /health stays 503 until a rebuild succeeds."""
    for row, seq in enumerate(self._rows):
      if seq is not None:
        self._finish(row, "error")
    try:
      self._rebuild()
    except Exception:
      logging.exception("rebuilding the slots failed; failing the queued requests too")
      with self._lock:
        waiting, self._waiting = list(self._waiting), collections.deque()
      for seq in waiting:
        seq.emit(Event(seq.index, finish_reason="error"))

  def _rebuild(self) -> None:
    self.healthy = False
    self.slots = self._empty(self.size, self.sampler.params)
    jax.block_until_ready(self.slots)
    self.healthy = True
    logging.info("the slots are rebuilt; serving again")

  def _admit(self) -> None:
    """Prefills waiting sequences into free slots (they join the batch at the next step)."""
    while True:
      with self._lock:
        free = [r for r, s in enumerate(self._rows) if s is None]
        if not free or not self._waiting:
          return
        seq = self._waiting.popleft()
        self._rows[free[0]] = seq
      if free[0] >= self.size:
        self._set_size(next(b for b in self.buckets if b > free[0]))
      self._start(free[0], seq)

  def _start(self, row: int, seq: Sequence) -> None:
    # at most the window: the API refuses a longer prompt (Server._check_length)
    P = sampler_lib.prompt_slots(len(seq.prompt_ids), self.window)
    tokens, pad = decode.left_pad([seq.prompt_ids], P, P)
    sampling = decode.SamplingParams(jnp.float32(seq.temperature), jnp.int32(seq.top_k),
                                     jnp.float32(seq.top_p))
    # row `index` of Sampler.generate(prompts, seed=seed): choice i samples as its row i
    key_data = jax.random.key_data(decode.row_keys(jax.random.key(seq.seed), 1, seq.row)[0])
    slot, out = self._prefill(self.sampler.params, tokens[0], jnp.int32(pad[0]), key_data,
                              sampling)
    self.slots = self._put(self.slots, jnp.int32(row), slot)
    out = jax.device_get(out)
    seq.history, seq.pad = tokens[0].tolist(), int(pad[0])
    seq.text = streaming.TextStream(
        self.sampler.tokenizer, seq.prompt_ids, seq.max_tokens, seq.stop,
        () if seq.ignore_eos else self.sampler.stop_ids, seq.skip_special_tokens)
    prompt = None
    if seq.score_prompt:
      first = int(pad[0])  # scores of the real prompt tokens after the first one
      prompt = [self._token(seq, out.prompt, i) for i in range(first, P - 1)]
    if seq.max_tokens == 0:
      seq.emit(Event(seq.index, prompt=prompt, finish_reason="length"))
      self._release(row)
      return
    seq.emit(Event(seq.index, prompt=prompt))
    self._accept(row, seq, self._token(seq, out.first, None, int(out.token)))

  def _token(self, seq: Sequence, scores: slots_lib.TokenScores, i, token_id=None) -> Token:
    at = (lambda x: x) if i is None else (lambda x: x[i])
    chosen = int(seq.history[i + 1]) if token_id is None else token_id
    return Token(chosen, float(at(scores.logprob)),
                 _alternatives(at(scores.top_ids), at(scores.top_logprobs), seq.top_n))

  def _free_cancelled(self) -> None:
    for row, seq in enumerate(self._rows):
      if seq is not None and seq.cancelled:
        self._release(row)

  def _compact(self) -> None:
    """Moves the last live sequences into the free slots below them, then shrinks the slots
    to a smaller bucket once the live ones fit in half of it (a sequence ending and the
    next arriving do not resize back and forth, except between 1 and 2)."""
    while True:
      with self._lock:
        live = [r for r, seq in enumerate(self._rows) if seq is not None]
        free = [r for r, seq in enumerate(self._rows) if seq is None]
        if not live or not free or free[0] > live[-1]:
          break
        src, dst = live[-1], free[0]
        self._rows[dst], self._rows[src] = self._rows[src], None
      self.slots = self._move(self.slots, jnp.int32(src), jnp.int32(dst))
    smaller = [b for b in self.buckets if b < self.size]
    if smaller and len(live) <= max(smaller[-1] // 2, 1):
      self._set_size(smaller[-1])

  def _advance(self) -> None:
    """Slides full caches, then one step of every slot held (a bucket: _compact)."""
    for row, seq in enumerate(self._rows):
      if seq is not None:
        self._maybe_slide(row, seq)
    live = np.array([s is not None for s in self._rows[:self.size]])
    self.slots, scores = self._step(self.slots, self.sampler.params, live)
    tokens, scores = jax.device_get((self.slots.token_S, scores))
    for row, seq in enumerate(self._rows[:self.size]):
      if seq is not None:
        token = Token(int(tokens[row]), float(scores.logprob[row]),
                      _alternatives(scores.top_ids[row], scores.top_logprobs[row], seq.top_n))
        self._accept(row, seq, token)

  def _maybe_slide(self, row: int, seq: Sequence) -> None:
    cur = len(seq.history) - 1  # the newest token's slot; it is not in the cache yet
    if cur - seq.base < self.window:
      return
    base = cur - self.window // 2
    prefix = np.asarray(seq.history[base:cur], np.int32)
    cache = self._slide(self.sampler.params, prefix, jnp.int32(seq.pad), jnp.int32(base))
    self.slots = self._put_cache(self.slots, jnp.int32(row), cache, jnp.int32(base))
    seq.base = base

  def _accept(self, row: int, seq: Sequence, token: Token) -> None:
    """Records a sampled token, sends what is new, frees the slot when the sequence ends."""
    seq.history.append(token.id)
    done = seq.text.add(token.id)
    end = seq.text.safe_length()
    seq.emit(Event(seq.index, seq.text.text[seq.sent:end], [token],
                   finish_reason=seq.text.finish_reason))
    seq.sent = end
    if done:
      self._release(row)

  def _finish(self, row: int, reason: str) -> None:
    seq = self._rows[row]
    seq.emit(Event(seq.index, finish_reason=reason))
    self._release(row)

  def _release(self, row: int) -> None:
    with self._lock:
      self._rows[row] = None


def _alternatives(ids, logprobs, n: int) -> list[tuple[int, float]]:
  """The n most likely (id, logprob); a vocabulary smaller than slots.TOP_LOGPROBS pads the
  scores with -inf entries, which are not alternatives."""
  return [(i, lp) for i, lp in zip(ids[:n].tolist(), logprobs[:n].tolist()) if lp > -np.inf]
