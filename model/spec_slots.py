"""Speculative decoding in treadle-serve's slots: model/slots.py's per-slot state plus what a
draft needs, one speculative round (model/speculative.py's `round_row`) per slot per step.

Each slot keeps, beside its Slots entry (whose target cache has K spare slots), the tokens
its target cache holds (`hist_SN`, index = absolute slot - base: the host rewrites it when it
slides the cache) for n-gram lookup and as the round's scratch, and the draft model's cache
with its own base. The round runs in coordinates relative to the slot's base, which leaves
positions, masks and sampling keys as they are in absolute slots. The host slides both
caches, each on its own window when it is full, and emits each slot's 1..K+1 new tokens.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from treadle.model import decode
from treadle.model import gpt
from treadle.model import slots as slots_lib
from treadle.model import speculative


class Extra(NamedTuple):
  hist_SN: jax.Array       # int32 [S, window + K + 1]
  draft_cache: Any         # the draft's Decoder.init_cache(1, Wd + K) per slot; None: n-gram
  draft_base_S: jax.Array  # int32 absolute slot held by the draft cache's index 0


class Stepped(NamedTuple):
  tokens_ST: jax.Array     # [S, K + 1] new tokens; the first count_S are real
  count_S: jax.Array       # accepted draft tokens + 1
  scores: slots_lib.TokenScores  # [S, K + 1] of each new token under the target
  proposed_S: jax.Array
  accepted_S: jax.Array


def empty(target: gpt.Decoder, spec: speculative.Spec, num_slots: int, window: int):
  K = spec.num_draft
  slots = slots_lib.empty(target, num_slots, window + K)
  draft_cache = None
  if spec.model is not None:
    one = spec.model.init_cache(1, spec.model.cfg.max_seq_len + K)
    draft_cache = jax.tree.map(lambda x: jnp.zeros((num_slots, *x.shape), x.dtype), one)
  zeros = jnp.zeros((num_slots,), jnp.int32)
  return slots, Extra(jnp.zeros((num_slots, window + K + 1), jnp.int32), draft_cache, zeros)


def prefill(target: gpt.Decoder, spec: speculative.Spec, window: int, tokens_P, pad, key_data,
            sampling: decode.SamplingParams):
  """slots.prefill (target cache window + K) with the draft's prefill and the history."""
  K, P = spec.num_draft, tokens_P.shape[0]
  slot, out = slots_lib.prefill(target, window + K, tokens_P, pad, key_data, sampling)
  hist = jnp.zeros((window + K + 1,), jnp.int32).at[:P].set(tokens_P).at[P].set(out.token)
  draft_cache, draft_base = None, jnp.int32(0)
  if spec.model is not None:
    Wd = spec.model.cfg.max_seq_len
    keep = speculative.draft_prompt_keep(P, Wd)
    _, draft_cache, draft_base = speculative.prefill_row(spec.model, hist, pad, P, Wd + K,
                                                         keep)
    draft_cache = jax.tree.map(lambda x: x[None], draft_cache)
  return (slot, Extra(hist[None], draft_cache, draft_base[None])), out


def step(target: gpt.Decoder, spec: speculative.Spec, window: int, state, live_S):
  """One speculative round for every live slot; idle slots compute but never advance."""
  slots, extra = state
  K = spec.num_draft

  def one(hist, pad, cache, base, dcache, dbase, cur, start, key_data, sampling):
    rel_cur = cur - base
    hist, cache, dcache, new_cur, proposed, accepted, (new_T, _), logits_TV = (
        speculative.round_row(target, spec, window, sampling, hist, jnp.maximum(pad - base, 0),
                              cache, jnp.int32(0), dcache, dbase - base, rel_cur, start - base,
                              jax.random.wrap_key_data(key_data), rel_cur + K + 1))
    count = new_cur - rel_cur
    return (hist, cache, dcache, new_T, count, proposed, accepted,
            slots_lib._scores(logits_TV, new_T))

  sampling = decode.SamplingParams(slots.temperature_S, slots.top_k_S, slots.top_p_S)
  hist, cache, dcache, new_ST, count_S, proposed_S, accepted_S, scores = jax.vmap(one)(
      extra.hist_SN, slots.pad_S, slots.cache, slots.base_S, extra.draft_cache,
      extra.draft_base_S, slots.cur_S, slots.start_S, slots.key_S2, sampling)
  last_S = jnp.take_along_axis(new_ST, (count_S - 1)[:, None], axis=1)[:, 0]
  slots = slots._replace(cache=cache, token_S=jnp.where(live_S, last_S, slots.token_S),
                         cur_S=jnp.where(live_S, slots.cur_S + count_S, slots.cur_S))
  extra = extra._replace(hist_SN=jnp.where(live_S[:, None], hist, extra.hist_SN),
                         draft_cache=dcache)
  zero = jnp.zeros_like(count_S)
  return (slots, extra), Stepped(new_ST, count_S, scores, jnp.where(live_S, proposed_S, zero),
                                 jnp.where(live_S, accepted_S, zero))


def put_hist(state, row, hist_N):
  slots, extra = state
  return slots, extra._replace(hist_SN=extra.hist_SN.at[row].set(hist_N))


def put_draft_cache(state, row, cache, base):
  slots, extra = state
  return slots, extra._replace(
      draft_cache=jax.tree.map(lambda a, one: a.at[row].set(one), extra.draft_cache, cache),
      draft_base_S=extra.draft_base_S.at[row].set(base))


def resize(fresh, state):
  """`fresh` (empty() of the new size) holding the first slots of `state`."""
  keep = min(fresh[0].token_S.shape[0], state[0].token_S.shape[0])
  return jax.tree.map(lambda new, old: new.at[:keep].set(old[:keep]), fresh, state)
