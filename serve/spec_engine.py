"""The continuous-batching engine with a draft (treadle-serve --draft_workdir / --draft ngram).

Everything about requests, slots, compaction and buckets is Engine's; what changes is the
state (model/spec_slots.py: the target cache with K spare slots, the draft's cache, the
tokens the target cache holds), the step (one speculative round per slot: each slot emits
its own 1..K+1 tokens, every one scored under the target) and the slides (the draft slides
on its own window). The acceptance rate is logged as requests finish.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np

from treadle.infer import sampler as sampler_lib
from treadle.model import decode
from treadle.model import slots as slots_lib
from treadle.model import spec_slots
from treadle.model import speculative
from treadle.serve import engine as engine_lib


class SpecEngine(engine_lib.Engine):

  def __init__(self, sampler: sampler_lib.Sampler, max_batch: int, max_queue: int,
               max_model_len: int | None = None, max_cache_gib: float = float("inf")):
    self.draft = sampler.draft
    self.num_draft = sampler.draft.num_tokens
    self.proposed = self.accepted = 0
    self._put_hist = jax.jit(spec_slots.put_hist, donate_argnums=0)
    self._put_draft_cache = jax.jit(spec_slots.put_draft_cache, donate_argnums=0)
    self._draft_slide = jax.jit(self._draft_slide_fn)
    super().__init__(sampler, max_batch, max_queue, max_model_len, max_cache_gib)
    if self.num_draft >= self.window // 2:
      raise ValueError(f"--num_draft_tokens={self.num_draft} must be below half of "
                       f"--max_model_len ({self.window})")
    self._put_cache = jax.jit(self._put_target_cache, donate_argnums=0)
    # the caches as they are here: K spare slots a target cache, plus the draft's
    shapes = jax.eval_shape(lambda: self._empty_fn(max_batch, sampler.params))
    self.cache_gib = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / 2**30
    if self.cache_gib > max_cache_gib:
      raise engine_lib.CacheTooLarge(
          f"the KV caches of {max_batch} slots x {self.window} + {self.num_draft} tokens and "
          f"the draft's need {self.cache_gib:.2f} GiB, over --max_cache_gib={max_cache_gib:g}: "
          "lower --max_batch or --max_model_len, or raise --max_cache_gib")

  # -- jitted pieces: (target params, draft params) ---------------------------------------

  def _models(self, params):
    target = self._model(params)
    draft_model = None
    if self.draft.cfg is not None:
      draft_model = decode.merge(self.draft.graphdef, self.draft.params)
    return target, self.draft.spec(draft_model)

  def _empty_fn(self, num_slots, params):
    return spec_slots.empty(*self._models(params), num_slots, self.window)

  def _prefill_fn(self, params, tokens_P, pad, key_data, sampling):
    return spec_slots.prefill(*self._models(params), self.window, tokens_P, pad, key_data,
                              sampling)

  def _step_fn(self, state, params, live_S):
    return spec_slots.step(*self._models(params), self.window, state, live_S)

  def _slide_fn(self, params, prefix_K, pad, base):
    return slots_lib.slide(self._model(params), self.window + self.num_draft, prefix_K, pad,
                           base)

  def _draft_slide_fn(self, prefix_K, pad, base):
    draft_model = decode.merge(self.draft.graphdef, self.draft.params)
    return slots_lib.slide(draft_model, draft_model.cfg.max_seq_len + self.num_draft, prefix_K,
                           pad, base)

  def _resize_fn(self, state, params, size: int):
    return spec_slots.resize(self._empty_fn(size, params), state)

  @staticmethod
  def _put_target_cache(state, row, cache, base):
    slots, extra = state
    return slots_lib.put_cache(slots, row, cache, base), extra

  def _warm_up_puts(self) -> list:
    """Engine's, and the history and the draft cache."""
    zero = jnp.int32(0)
    hist = jnp.zeros((self.window + self.num_draft + 1,), jnp.int32)
    puts = super()._warm_up_puts() + [lambda slots: self._put_hist(slots, zero, hist)]
    if self.draft.cfg is not None:
      Wd = self.draft.cfg.max_seq_len
      draft = self._draft_slide(jnp.zeros((Wd // 2,), jnp.int32), zero, zero)
      puts.append(lambda slots: self._put_draft_cache(slots, zero, draft, zero))
    return puts

  # -- the loop ---------------------------------------------------------------------------

  def _start(self, row: int, seq: engine_lib.Sequence) -> None:
    # where spec_slots.prefill put the draft cache's base (the draft's window may be shorter)
    P = sampler_lib.prompt_slots(len(seq.prompt_ids), self.window)
    Wd = self.draft.cfg.max_seq_len if self.draft.cfg is not None else 0
    seq.draft_base = P - speculative.draft_prompt_keep(P, Wd) if Wd else 0
    super()._start(row, seq)

  def _maybe_slide(self, row: int, seq: engine_lib.Sequence) -> None:
    cur = len(seq.history) - 1
    if cur - seq.base >= self.window:
      super()._maybe_slide(row, seq)  # the target cache (window + K slots)
      hist = np.zeros((self.window + self.num_draft + 1,), np.int32)
      held = seq.history[seq.base:cur + 1]
      hist[:len(held)] = held
      self.slots = self._put_hist(self.slots, jnp.int32(row), hist)
    if self.draft.cfg is None:
      return
    Wd = self.draft.cfg.max_seq_len
    if cur - seq.draft_base >= Wd:
      base = cur - Wd // 2
      prefix = np.asarray(seq.history[base:cur], np.int32)
      cache = self._draft_slide(prefix, jnp.int32(seq.pad), jnp.int32(base))
      self.slots = self._put_draft_cache(self.slots, jnp.int32(row), cache, jnp.int32(base))
      seq.draft_base = base

  def _advance(self) -> None:
    for row, seq in enumerate(self._rows):
      if seq is not None:
        self._maybe_slide(row, seq)
    live = np.array([s is not None for s in self._rows[:self.size]])
    self.slots, out = self._step(self.slots, self.sampler.params, live)
    out = jax.device_get(out)
    self.proposed += int(out.proposed_S.sum())
    self.accepted += int(out.accepted_S.sum())
    for row, seq in enumerate(self._rows[:self.size]):
      for j in range(int(out.count_S[row]) if seq is not None else 0):
        scores = jax.tree.map(lambda x: x[row, j], out.scores)
        token = engine_lib.Token(int(out.tokens_ST[row, j]), float(scores.logprob),
                                 engine_lib._alternatives(scores.top_ids, scores.top_logprobs,
                                                          seq.top_n))
        self._accept(row, seq, token)
        if self._rows[row] is not seq:  # it finished: the rest of its tokens are dropped
          break

  def _release(self, row: int) -> None:
    super()._release(row)
    if self.proposed:
      logging.info("speculative decoding: acceptance rate %.3f (%d of %d draft tokens)",
                   self.acceptance_rate, self.accepted, self.proposed)

  @property
  def acceptance_rate(self) -> float | None:
    return self.accepted / self.proposed if self.proposed else None
