"""Autoregressive decoding: prompt prefill, a jitted KV-cache loop, and token sampling.

Prompts of different lengths are left-padded into one batch; each row's positions start
at 0 on its first real token and padding slots are masked out of attention.

Past the context window (the model's learned positions, W = max_seq_len), the cache
slides: when it is full, the last W//2 tokens are re-encoded as a fresh prefix (positions
0..W//2-1) and decoding continues. Within the window, cached decoding is exactly full
recomputation; past it, each token sees between W//2 and W-1 previous tokens.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from treadle.model import gpt


class Carry(NamedTuple):
  """Decode-loop state. Slots are absolute token indices into `tokens_BN`."""
  tokens_BN: jax.Array   # int32 history: left-padded prompt, then generated tokens
  pad_B: jax.Array       # int32 padding slots at the start of each row
  cache: Any             # Decoder.init_cache: W slots per layer
  base: jax.Array        # int32: absolute slot held by cache index 0
  cur: jax.Array         # int32: slot of the newest sampled token (not yet in the cache)
  start: jax.Array       # int32: slot of the first sampled token (= the prompt length)
  keys_B: jax.Array      # one key per row (row_keys): a row's draws ignore the other rows
  stop_ids_K: jax.Array  # int32 end-of-sequence ids, -1 padded (stop_ids)
  done_B: jax.Array      # bool: the row has sampled one of them


class SamplingParams(NamedTuple):
  """Traced scalars: changing them never recompiles."""
  temperature: jax.Array  # 0 = greedy
  top_k: jax.Array        # 0 = off
  top_p: jax.Array        # 1 = off


STOP_IDS = 8  # stop_ids' fixed length: any model's eos ids, one compiled program


def stop_ids(ids=()) -> jax.Array:
  """End-of-sequence ids as the loop takes them: int32 [STOP_IDS], -1 padded. The loop
  stops once every row has sampled one (the rows' later tokens are to be ignored)."""
  ids = sorted({int(i) for i in ids})
  if len(ids) > STOP_IDS:
    raise ValueError(f"{len(ids)} end-of-sequence ids; at most {STOP_IDS} are supported")
  return jnp.asarray(ids + [-1] * (STOP_IDS - len(ids)), jnp.int32)


def _is_stop(token_B: jax.Array, stop_ids_K: jax.Array) -> jax.Array:
  return jnp.any(token_B[:, None] == stop_ids_K[None, :], axis=-1)


def row_keys(key: jax.Array, num_rows: int, first_row=0) -> jax.Array:
  """One key per batch row, row r = fold_in(key, first_row + r): a prompt samples the same
  text alone (first_row = its index) as at that index of a batch."""
  rows = first_row + jnp.arange(num_rows)
  return jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)


def _token_keys(carry_keys_B: jax.Array, index) -> jax.Array:
  """Each row's key for its `index`-th sampled token (counted from the prompt's end, so the
  prompt's padded length never changes the draws)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, index))(carry_keys_B)


def filtered_logits(logits_BV: jax.Array, params: SamplingParams) -> jax.Array:
  """Temperature-scaled fp32 logits with top-k and top-p (nucleus) filtering applied (the
  removed tokens at -inf): the distribution sample_token draws from when temperature > 0."""
  scaled = logits_BV.astype(jnp.float32) / jnp.maximum(params.temperature, 1e-6)
  # A branch taken at run time does only the filters that are on (one compiled program
  # serves every setting); their thresholds come from bisections, not a sort of the
  # vocabulary, which at an imported model's 32k+ tokens cost more than a small model's
  # step on a CPU (experiments/bench/sampling_head_bench.py)
  branch = jnp.where(params.top_p < 1, 2, jnp.where(params.top_k > 0, 1, 0))
  return jax.lax.switch(branch, (_unfiltered, _top_k, _top_k_top_p), scaled, params)


# The branches are module-level functions, not closures: JAX caches a branch's trace by the
# function, so calls outside jit (notebooks, tests) compile once rather than at every call.
def _unfiltered(scaled: jax.Array, params: SamplingParams) -> jax.Array:
  del params
  return scaled


def _top_k(scaled: jax.Array, params: SamplingParams) -> jax.Array:
  kth = kth_largest(scaled, jnp.clip(params.top_k, 1, scaled.shape[-1]))
  return jnp.where(scaled < kth[..., None], -jnp.inf, scaled)


def _top_k_top_p(scaled: jax.Array, params: SamplingParams) -> jax.Array:
  scaled = jax.lax.cond(params.top_k > 0, _top_k, _unfiltered, scaled, params)
  threshold = nucleus_threshold(scaled, params.top_p)
  return jnp.where(scaled < threshold[..., None], -jnp.inf, scaled)


def kth_largest(x: jax.Array, k: jax.Array) -> jax.Array:
  """The k-th largest value of each row of x (k traced, 1 <= k <= the row length): exactly
  what sorting gives, ties included."""
  keys = _order_keys(x)
  return _value_at(x, keys, _least_key_with_mass_above_below(keys, jnp.int32(1), k))


def nucleus_threshold(x: jax.Array, top_p: jax.Array) -> jax.Array:
  """Per row of logits x, the smallest value v such that the tokens above v hold less than
  top_p of softmax(x)'s mass: keeping the values >= v keeps the smallest set of top tokens
  whose mass reaches top_p (all of a tie). The masses are float32 sums, so a token whose
  mass-above lies within rounding of top_p can fall either side, as with a sorted cumsum."""
  keys = _order_keys(x)
  probs = jax.nn.softmax(x.astype(jnp.float32), axis=-1)
  return _value_at(x, keys, _least_key_with_mass_above_below(keys, probs, top_p))


def _order_keys(x: jax.Array) -> jax.Array:
  """uint32 keys ordered as the float32 values are (sign bit flipped; negatives inverted)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _least_key_with_mass_above_below(keys, weights, bound) -> jax.Array:
  """Per row, the least key t with sum(weights of keys > t) < bound, by 32 halvings of
  [0, 2^32 - 1]: the mass above t only falls as t grows, and first drops below the bound at
  one of the row's keys."""
  def halve(_, bounds):  # invariant: the answer lies in [lo, hi]
    lo, hi = bounds
    mid = lo + ((hi - lo) >> 1)
    below = jnp.where(keys > mid[..., None], weights, 0).sum(-1) < bound
    return jnp.where(below, lo, mid + 1), jnp.where(below, mid, hi)

  lo = jnp.zeros(keys.shape[:-1], jnp.uint32)
  return jax.lax.fori_loop(0, 32, halve, (lo, jnp.full_like(lo, 0xFFFFFFFF)))[0]


def _value_at(x, keys, key) -> jax.Array:
  return jnp.where(keys == key[..., None], x, -jnp.inf).max(-1)


def sample_token(logits_BV: jax.Array, keys_B: jax.Array, params: SamplingParams) -> jax.Array:
  """Greedy, temperature, top-k and top-p (nucleus) sampling, combinable; row b draws with
  keys_B[b] alone. Greedy decoding runs only the argmax (a branch taken at run time: the
  parameters stay traced, one program serves both)."""
  return jax.lax.cond(params.temperature > 0, _sampled_tokens, _greedy_tokens,
                      logits_BV.astype(jnp.float32), keys_B, params)


def _sampled_tokens(logits_BV, keys_B, params: SamplingParams) -> jax.Array:
  filtered_BV = filtered_logits(logits_BV, params)
  return jax.vmap(jax.random.categorical)(keys_B, filtered_BV).astype(jnp.int32)


def _greedy_tokens(logits_BV, keys_B, params: SamplingParams) -> jax.Array:
  del keys_B, params
  return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def encode(model: gpt.Decoder, tokens_BT, first_slot, pad_B, cache, base, max_position=None):
  """Writes tokens at absolute slots first_slot.. into the cache; returns logits and cache.
  `max_position` clamps positions (speculative blocks score slots past the window)."""
  T = tokens_BT.shape[1]
  W = gpt.cache_len(cache)
  slots_T = first_slot + jnp.arange(T)
  row_start_B = jnp.maximum(base, pad_B)  # first real slot inside the window
  positions_BT = jnp.maximum(slots_T[None, :] - row_start_B[:, None], 0)
  if max_position is not None:
    positions_BT = jnp.minimum(positions_BT, max_position)
  valid_BS = (base + jnp.arange(W))[None, :] >= pad_B[:, None]
  decode = gpt.DecodeState(write_index=first_slot - base, valid_BS=valid_BS)
  return model(tokens_BT, positions_BT=positions_BT, cache=cache, decode=decode)


def prefill(model: gpt.Decoder, tokens_BN, pad_B, prompt_len: int, key, params: SamplingParams,
            first_row=0, stop_ids_K=None) -> Carry:
  """Encodes the (left-padded) prompt slots [0, prompt_len) and samples the first new token.

  Row b samples with row_keys(key, B, first_row)[b]; `stop_ids_K` (stop_ids(), default
  none) ends a row's decoding at an end-of-sequence id."""
  B = tokens_BN.shape[0]
  cache = model.init_cache(B, model.cfg.max_seq_len)
  zero = jnp.zeros((), jnp.int32)
  logits, cache = encode(model, tokens_BN[:, :prompt_len], zero, pad_B, cache, zero)
  cur = jnp.asarray(prompt_len, jnp.int32)
  keys_B = row_keys(key, B, first_row)
  token_B = sample_token(logits[:, -1], _token_keys(keys_B, 0), params)
  stop_ids_K = stop_ids() if stop_ids_K is None else stop_ids_K
  return Carry(tokens_BN.at[:, cur].set(token_B), pad_B, cache, zero, cur, cur, keys_B,
               stop_ids_K, _is_stop(token_B, stop_ids_K))


def _slide(model: gpt.Decoder, carry: Carry) -> Carry:
  """Cache full: re-encode the last W//2 tokens as a fresh prefix."""
  W = model.cfg.max_seq_len
  keep = W // 2
  base = carry.cur - keep
  prefix_BK = jax.lax.dynamic_slice_in_dim(carry.tokens_BN, base, keep, axis=1)
  cache = model.init_cache(carry.tokens_BN.shape[0], W)
  _, cache = encode(model, prefix_BK, base, carry.pad_B, cache, base)
  return carry._replace(cache=cache, base=base)


def decode_steps(model: gpt.Decoder, carry: Carry, num_steps, params: SamplingParams) -> Carry:
  """Feeds the newest token and samples the next, `num_steps` times (a traced count), or
  until every row has sampled a stop id.

  Two nested loops: the inner one decodes until the cache is full, with no branch in its
  body (a lax.cond on the cache inside it made XLA copy the whole cache every token); the
  outer one slides the cache, once per W/2 tokens.
  """
  W = model.cfg.max_seq_len
  last = carry.tokens_BN.shape[1] - 1
  stop = jnp.minimum(carry.cur + num_steps, last)

  def step(c: Carry) -> Carry:
    token_B1 = jax.lax.dynamic_slice_in_dim(c.tokens_BN, c.cur, 1, axis=1)
    logits, cache = encode(model, token_B1, c.cur, c.pad_B, c.cache, c.base)
    nxt = c.cur + 1
    token_B = sample_token(logits[:, -1], _token_keys(c.keys_B, nxt - c.start), params)
    tokens = jax.lax.dynamic_update_slice_in_dim(c.tokens_BN, token_B[:, None], nxt, axis=1)
    done_B = c.done_B | _is_stop(token_B, c.stop_ids_K)
    return c._replace(tokens_BN=tokens, cache=cache, cur=nxt, done_B=done_B)

  going = lambda c, until: (c.cur < until) & ~jnp.all(c.done_B)

  def window(c: Carry) -> Carry:
    c = jax.lax.cond(c.cur - c.base >= W, lambda x: _slide(model, x), lambda x: x, c)
    window_stop = jnp.minimum(stop, c.base + W)  # the cache is full at slot base + W
    return jax.lax.while_loop(lambda x: going(x, window_stop), step, c)

  return jax.lax.while_loop(lambda c: going(c, stop), window, carry)


def recompute_steps(model: gpt.Decoder, carry: Carry, num_steps, params: SamplingParams) -> Carry:
  """Reference decoder without a cache: re-encodes the whole window for every token.

  Used to check the cached loop and as the baseline in benchmarks.
  """
  W = model.cfg.max_seq_len
  B, N = carry.tokens_BN.shape
  stop = jnp.minimum(carry.cur + num_steps, N - 1)

  def body(c: Carry) -> Carry:
    base = jnp.maximum(c.cur + 1 - W, 0)  # the last W tokens, as nanoGPT crops its context
    padded_BN = jnp.pad(c.tokens_BN, ((0, 0), (0, W)))  # so a W-slice never runs off the end
    window_BW = jax.lax.dynamic_slice_in_dim(padded_BN, base, W, axis=1)
    logits, _ = encode(model, window_BW, base, c.pad_B, model.init_cache(B, W), base)
    nxt = c.cur + 1
    token_B = sample_token(jax.lax.dynamic_index_in_dim(logits, c.cur - base, 1, False),
                           _token_keys(c.keys_B, nxt - c.start), params)
    tokens = jax.lax.dynamic_update_slice_in_dim(c.tokens_BN, token_B[:, None], nxt, axis=1)
    return c._replace(tokens_BN=tokens, cur=nxt, done_B=c.done_B | _is_stop(token_B, c.stop_ids_K))

  return jax.lax.while_loop(lambda c: (c.cur < stop) & ~jnp.all(c.done_B), body, carry)


def left_pad(prompts: list[list[int]], total_len: int, prompt_len: int):
  """Rows right-aligned at prompt_len; returns (tokens [B, total_len], pad [B]) as numpy."""
  import numpy as np
  tokens = np.zeros((len(prompts), total_len), np.int32)
  pad = np.zeros((len(prompts),), np.int32)
  for i, p in enumerate(prompts):
    p = list(p)[-prompt_len:]
    pad[i] = prompt_len - len(p)
    tokens[i, pad[i]:prompt_len] = p
  return tokens, pad


def merge(graphdef: nnx.GraphDef, params) -> gpt.Decoder:
  return nnx.merge(graphdef, params)
