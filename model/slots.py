"""A fixed set of batch slots, each its own sequence with its own KV cache, decoded together.

Each slot is a batch-1 copy of the state `model/decode.py` keeps for a whole batch (cache,
newest token, absolute slot, cache base, left padding, PRNG key), stacked on a leading slot
axis; every step vmaps `decode.encode` and `decode.sample_token` over the slots, so a slot
computes exactly what `Sampler.generate` computes for one prompt (same prompt layout, same
slides, same keys) while the slots sit at different positions. The host decides which slots
are live, fills a free slot (prefill) and slides a full one; nothing here re-implements the
model.

A slot's cache holds `cache_len` tokens (treadle-serve's --max_model_len), at most the model's
context: its window, where it slides. The host keeps the live sequences in the first slots
(`move` fills a hole) and the Slots the smallest bucket that holds them (`resize`), so one
client does not pay for 32 slots.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from treadle.model import decode
from treadle.model import gpt

TOP_LOGPROBS = 20  # the most alternatives a request may ask for per token (OpenAI: 5)


class Slots(NamedTuple):
  cache: Any             # Decoder.init_cache(1, W) per slot, stacked: leaves [S, ...]
  token_S: jax.Array     # int32: newest sampled token (not yet in the cache)
  cur_S: jax.Array       # int32: its absolute slot in the sequence
  base_S: jax.Array      # int32: absolute slot held by cache index 0
  pad_S: jax.Array       # int32: padding slots before the prompt
  start_S: jax.Array     # int32: slot of the first sampled token (= the prompt's slots)
  key_S2: jax.Array      # uint32 key data of each slot's row key (decode.row_keys)
  temperature_S: jax.Array
  top_k_S: jax.Array
  top_p_S: jax.Array


class TokenScores(NamedTuple):
  """Log-probabilities under the model (log-softmax of its logits, before any sampling
  transform) of chosen tokens, with the TOP_LOGPROBS most likely alternatives."""
  logprob: jax.Array     # [...]
  top_ids: jax.Array     # [..., TOP_LOGPROBS]
  top_logprobs: jax.Array


def empty(model: gpt.Decoder, num_slots: int, cache_len: int) -> Slots:
  one = model.init_cache(1, cache_len)
  cache = jax.tree.map(lambda x: jnp.zeros((num_slots, *x.shape), x.dtype), one)
  zeros = jnp.zeros((num_slots,), jnp.int32)
  return Slots(cache, zeros, zeros, zeros, zeros, zeros, jnp.zeros((num_slots, 2), jnp.uint32),
               jnp.zeros((num_slots,), jnp.float32), zeros, jnp.ones((num_slots,), jnp.float32))


def _scores(logits_XV: jax.Array, chosen_X: jax.Array) -> TokenScores:
  logp_XV = jax.nn.log_softmax(logits_XV.astype(jnp.float32), axis=-1)
  # a vocabulary smaller than TOP_LOGPROBS (a character model's) is padded with -inf
  short = max(TOP_LOGPROBS - logp_XV.shape[-1], 0)
  padded = jnp.pad(logp_XV, [(0, 0)] * (logp_XV.ndim - 1) + [(0, short)],
                   constant_values=-jnp.inf)
  top_logp, top_ids = jax.lax.top_k(padded, TOP_LOGPROBS)
  chosen = jnp.take_along_axis(logp_XV, chosen_X[..., None], axis=-1)[..., 0]
  return TokenScores(chosen, top_ids.astype(jnp.int32), top_logp)


def _set_row(batched: Any, row, value: Any) -> Any:
  return jax.tree.map(lambda all_, one: all_.at[row].set(one), batched, value)


def _sampling(slots: Slots) -> decode.SamplingParams:
  return decode.SamplingParams(slots.temperature_S, slots.top_k_S, slots.top_p_S)


class Prefilled(NamedTuple):
  token: jax.Array        # the first sampled token
  first: TokenScores      # its scores
  prompt: TokenScores     # scores of prompt tokens 1.. given the ones before them: [P-1]


def _draw(logits_1V, row_key, index, sampling: decode.SamplingParams) -> jax.Array:
  """The `index`-th sampled token of a row with this row key, drawn as `decode` draws it."""
  return decode.sample_token(logits_1V, jax.random.fold_in(row_key, index)[None], sampling)[0]


def prefill(model: gpt.Decoder, cache_len: int, tokens_P, pad, key_data,
            sampling: decode.SamplingParams) -> tuple[Slots, Prefilled]:
  """One slot (a Slots of size 1, for `put`): one left-padded prompt encoded into a fresh
  cache of `cache_len` and its first token sampled, as `decode.prefill` does for one row;
  `key_data` is that row's key (`decode.row_keys(key(seed), ...)[i]` for row i of
  `Sampler.generate`). Independent of the number of slots: compiled once per prompt length."""
  P = tokens_P.shape[0]
  cache = model.init_cache(1, cache_len)
  zero = jnp.zeros((), jnp.int32)
  logits_1PV, cache = decode.encode(model, tokens_P[None], zero, pad[None], cache, zero)
  token = _draw(logits_1PV[:, -1], jax.random.wrap_key_data(key_data), 0, sampling)
  one = lambda x: jnp.asarray(x)[None]
  slot = Slots(jax.tree.map(one, cache), one(token), one(P).astype(jnp.int32),
               one(0).astype(jnp.int32), one(pad), one(P).astype(jnp.int32), one(key_data),
               one(sampling.temperature), one(sampling.top_k), one(sampling.top_p))
  logits_PV = logits_1PV[0]
  return slot, Prefilled(token, _scores(logits_PV[-1], token),
                         _scores(logits_PV[:-1], tokens_P[1:]))


def put(slots: Slots, row, slot: Slots) -> Slots:
  """A one-slot state (`prefill`) into slot `row`."""
  return jax.tree.map(lambda all_, one: all_.at[row].set(one[0]), slots, slot)


def step(model: gpt.Decoder, slots: Slots, live_S) -> tuple[Slots, TokenScores]:
  """Feeds every live slot its newest token and samples the next (`decode.decode_steps`'
  body, per slot). Idle slots compute too (the shapes are fixed) but never advance."""
  def one(cache, token, cur, base, pad):
    logits_11V, cache = decode.encode(model, token[None, None], cur, pad[None], cache, base)
    return cache, logits_11V[0, -1]

  cache, logits_SV = jax.vmap(one)(slots.cache, slots.token_S, slots.cur_S, slots.base_S,
                                   slots.pad_S)
  new_S = _draw_slots(logits_SV, slots, live_S)
  slots = slots._replace(cache=cache, token_S=jnp.where(live_S, new_S, slots.token_S),
                         cur_S=jnp.where(live_S, slots.cur_S + 1, slots.cur_S))
  return slots, _scores(logits_SV, new_S)


def _draw_slots(logits_SV, slots: Slots, live_S) -> jax.Array:
  """Each slot's next token as `_draw` draws it. Per-slot sampling parameters are batched,
  so inside the vmap every branch runs: when no live slot samples (all greedy) only the
  argmax runs, skipping the sampling filters' passes over the vocabulary for every slot."""
  def sampled(logits):
    draw = lambda l_V, key_data, cur, start, sampling: _draw(
        l_V[None], jax.random.wrap_key_data(key_data), cur + 1 - start, sampling)
    return jax.vmap(draw)(logits, slots.key_S2, slots.cur_S, slots.start_S, _sampling(slots))
  greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.lax.cond((live_S & (slots.temperature_S > 0)).any(), sampled, greedy, logits_SV)


def slide(model: gpt.Decoder, cache_len: int, prefix_K, pad, base) -> Any:
  """A full slot's next cache (for `put_cache`): its last W//2 tokens (absolute slots
  base..) re-encoded as a fresh prefix, as `decode._slide` does for a batch."""
  cache = model.init_cache(1, cache_len)
  _, cache = decode.encode(model, prefix_K[None], base, pad[None], cache, base)
  return cache


def put_cache(slots: Slots, row, cache, base) -> Slots:
  return slots._replace(cache=_set_row(slots.cache, row, cache),
                        base_S=slots.base_S.at[row].set(base))


def move(slots: Slots, src, dst) -> Slots:
  """Slot `src`'s whole state (cache, position, key, sampling) into slot `dst`."""
  return jax.tree.map(lambda x: x.at[dst].set(x[src]), slots)


def resize(model: gpt.Decoder, slots: Slots, size: int) -> Slots:
  """`size` slots (static) holding the first min(size, now) slots' states, the rest empty.
  A step runs every slot of its Slots: the host keeps it the smallest bucket that holds
  the live sequences (slicing the first slots of a larger one inside the step made XLA copy
  their caches every token, slower than stepping them all)."""
  fresh = empty(model, size, gpt.cache_len(slots.cache))
  keep = min(size, slots.token_S.shape[0])
  return jax.tree.map(lambda new, old: new.at[:keep].set(old[:keep]), fresh, slots)
