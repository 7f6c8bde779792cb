"""Speculative decoding: a cheap draft proposes K tokens, the target scores them in one pass.

Drafts: a smaller decoder with the same vocabulary (its own KV cache and window), or n-gram
prompt lookup (the tokens that followed the latest earlier occurrence of the last n tokens;
no model). Acceptance is the standard rejection scheme (Leviathan et al. 2023; Chen et al.
2023): draft token d with draft probability q(d) is kept with probability min(1, p(d)/q(d))
under the target's sampling distribution p (temperature, top-k and top-p applied); the first
rejected position draws from max(p - q, 0) renormalised, and a fully accepted block draws one
more token from p. Each emitted token is therefore distributed as the target alone would draw
it. With temperature 0 both p and q are one-hot argmaxes: a draft token is kept iff it is the
target's argmax, so greedy text is the target's greedy text whatever the draft.

Rows advance independently (each accepts its own number of tokens): the state is one batch-1
decode state per row, stacked, and every piece is vmapped over rows, as model/slots.py does
for the server. Slot layout, positions and the slide schedule are `model/decode.py`'s: row r's
token at absolute slot s is predicted from the same cache contents as plain decoding would
use (the target slides exactly when its cache is full, W//2 tokens kept), so cached greedy
decoding with a draft reproduces it across the slide. A verification block never crosses the
slide point: positions past it are scored (fixed shapes) but never accepted. The target cache
has K spare slots so a block that starts near the end still fits. The draft model keeps the
same schedule on its own window (a draft identical to the target proposes exactly the
target's tokens): it slides when full, and its feeds past its window (clamped positions) only
cost acceptance.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from treadle.model import decode
from treadle.model import gpt

_DRAFT, _ACCEPT, _RESIDUAL = 1, 2, 3  # key purposes, folded in after the token's index


class Carry(NamedTuple):
  """Per-row decode state (leading axis B). Slots are absolute indices into tokens_BN."""
  tokens_BN: jax.Array    # int32 history; K + 1 spare slots at the end (scratch for blocks)
  pad_B: jax.Array
  cache: Any              # target: Decoder.init_cache(1, W + K) per row, stacked on axis 0
  base_B: jax.Array       # absolute slot held by the target cache's index 0
  draft_cache: Any        # draft model's cache per row (None for n-gram drafts)
  draft_base_B: jax.Array
  cur_B: jax.Array        # slot of the newest sampled token (not yet in either cache)
  start: jax.Array        # scalar: slot of the first sampled token (= the prompt's slots)
  keys_B: jax.Array
  stop_ids_K: jax.Array
  done_B: jax.Array
  proposed_B: jax.Array   # draft tokens offered for verification
  accepted_B: jax.Array   # of which accepted


class Spec(NamedTuple):
  """Static description of the draft: `model` a gpt.Decoder, or None for n-gram lookup."""
  num_draft: int          # K
  model: Any = None
  ngram_max: int = 3      # n-gram lookup tries n = ngram_max .. ngram_min
  ngram_min: int = 1


def check(spec: Spec, target_window: int) -> None:
  """One-line ValueErrors for draft settings the loop cannot honour."""
  K = spec.num_draft
  if K < 1:
    raise ValueError(f"num_draft_tokens={K} must be >= 1")
  if K >= target_window // 2:
    raise ValueError(f"num_draft_tokens={K} must be below half the target's context "
                     f"({target_window})")
  if spec.model is not None and K >= spec.model.cfg.max_seq_len // 2:
    raise ValueError(f"num_draft_tokens={K} must be below half the draft's context "
                     f"({spec.model.cfg.max_seq_len})")
  if spec.model is None and not 1 <= spec.ngram_min <= spec.ngram_max:
    raise ValueError(f"n-gram sizes {spec.ngram_min}..{spec.ngram_max}: need 1 <= min <= max")


def sampling_probs(logits_XV: jax.Array, params: decode.SamplingParams) -> jax.Array:
  """The distribution decode.sample_token draws from: one-hot argmax when greedy (then the
  filters do not run)."""
  return jax.lax.cond(params.temperature > 0, _sampled_probs, _greedy_probs,
                      logits_XV.astype(jnp.float32), params)


def _sampled_probs(logits_XV, params: decode.SamplingParams) -> jax.Array:
  return jax.nn.softmax(decode.filtered_logits(logits_XV, params), axis=-1)


def _greedy_probs(logits_XV, params: decode.SamplingParams) -> jax.Array:
  del params
  return jax.nn.one_hot(jnp.argmax(logits_XV, axis=-1), logits_XV.shape[-1],
                        dtype=logits_XV.dtype)


def _key(row_key, index, purpose):
  return jax.random.fold_in(jax.random.fold_in(row_key, index), purpose)


def _draw(probs_V, key, params: decode.SamplingParams):
  sampled = jax.random.categorical(key, jnp.log(probs_V))
  return jnp.where(params.temperature > 0, sampled, jnp.argmax(probs_V)).astype(jnp.int32)


def _encode_row(model: gpt.Decoder, tokens_T, slot, pad, cache, base):
  """decode.encode for one row (batch 1), positions past the model's context clamped: a
  block's tail beyond the slide point is scored but never accepted, and a clamped position
  keeps its keys and values finite (they stay masked until overwritten)."""
  logits, cache = decode.encode(model, tokens_T[None], slot, pad[None], cache, base,
                                max_position=model.cfg.max_seq_len - 1)
  return logits[0], cache


def draft_prompt_keep(prompt_len: int, draft_window: int) -> int:
  """Prompt slots the draft encodes: all that fit its window, else the last half window
  (as if it had slid there)."""
  return prompt_len if prompt_len <= draft_window else draft_window // 2


def prefill_row(model: gpt.Decoder, tokens_N, pad, prompt_len: int, cache_len: int, keep: int):
  """Encodes the prompt's last `keep` slots (all of them when keep = prompt_len)."""
  base = jnp.int32(prompt_len - keep)
  cache = model.init_cache(1, cache_len)
  prefix = jax.lax.dynamic_slice_in_dim(tokens_N, base, keep)
  logits, cache = _encode_row(model, prefix, base, pad, cache, base)
  return logits[-1], cache, base


def prefill(target: gpt.Decoder, spec: Spec, tokens_BN, pad_B, prompt_len: int, key,
            params: decode.SamplingParams, first_row=0, stop_ids_K=None) -> Carry:
  """decode.prefill per row: the prompt encoded into each cache and the first token drawn
  with the same key (row_keys(key, B, first_row), index 0), so it is the plain loop's."""
  B, K = tokens_BN.shape[0], spec.num_draft
  tokens_BN = jnp.pad(tokens_BN, ((0, 0), (0, K + 1)))
  W = target.cfg.max_seq_len
  logits_BV, cache, base_B = jax.vmap(
      lambda t, p: prefill_row(target, t, p, prompt_len, W + K, prompt_len))(tokens_BN, pad_B)
  keys_B = decode.row_keys(key, B, first_row)
  first_B = decode.sample_token(logits_BV, decode._token_keys(keys_B, 0), params)
  draft_cache, draft_base_B = None, jnp.zeros((B,), jnp.int32)
  if spec.model is not None:
    Wd = spec.model.cfg.max_seq_len
    keep = draft_prompt_keep(prompt_len, Wd)
    draft_row = lambda t, p: prefill_row(spec.model, t, p, prompt_len, Wd + K, keep)
    _, draft_cache, draft_base_B = jax.vmap(draft_row)(tokens_BN, pad_B)
  stop_ids_K = decode.stop_ids() if stop_ids_K is None else stop_ids_K
  cur = jnp.int32(prompt_len)
  zeros = jnp.zeros((B,), jnp.int32)
  return Carry(tokens_BN.at[:, cur].set(first_B), pad_B, cache, base_B, draft_cache,
               draft_base_B, zeros + cur, cur, keys_B, stop_ids_K,
               decode._is_stop(first_B, stop_ids_K), zeros, zeros)


# -- drafts -------------------------------------------------------------------------------

def _model_draft(spec: Spec, tokens_N, cur, pad, cache, base, row_key, start, params):
  """Feeds slots cur..cur+K to the draft one at a time; returns the K tokens it drew, their
  draft distributions [K, V], and its cache (holding every slot up to cur+K, so it is
  current whatever the target accepts; Wd + K slots)."""
  K = spec.num_draft

  def feed(i, c):
    token, cache, drafts_K, q_KV = c
    logits_1V, cache = _encode_row(spec.model, token[None], cur + i, pad, cache, base)
    q_V = sampling_probs(logits_1V[-1, :spec.model.cfg.vocab_size], params)
    nxt = _draw(q_V, _key(row_key, cur + i + 1 - start, _DRAFT), params)
    keep = i < K
    drafts_K = jnp.where(keep, drafts_K.at[jnp.minimum(i, K - 1)].set(nxt), drafts_K)
    q_KV = jnp.where(keep, q_KV.at[jnp.minimum(i, K - 1)].set(q_V), q_KV)
    return nxt, cache, drafts_K, q_KV

  init = (tokens_N[cur], cache, jnp.zeros((K,), jnp.int32),
          jnp.zeros((K, spec.model.cfg.vocab_size), jnp.float32))
  _, cache, drafts_K, q_KV = jax.lax.fori_loop(0, K + 1, feed, init)
  return drafts_K, q_KV, cache, jnp.int32(K)


def _ngram_draft(spec: Spec, tokens_N, cur, pad, vocab: int):
  """Prompt lookup: for n = ngram_max..ngram_min, the latest j < cur - n + 1 where
  tokens[j:j+n] equals the last n tokens (tokens[cur-n+1:cur+1]); proposes what followed
  it, up to K tokens and never past cur. Returns (drafts [K], one-hot q [K, V], count)."""
  K, N = spec.num_draft, tokens_N.shape[0]
  slots = jnp.arange(N)
  best_start, found = jnp.int32(0), jnp.bool_(False)
  for n in range(spec.ngram_min, spec.ngram_max + 1):  # larger n found later wins
    match = (slots >= pad) & (slots + n - 1 < cur) & (cur - n + 1 >= pad)
    for k in range(n):
      shifted = jnp.roll(tokens_N, -k)
      match &= shifted == tokens_N[jnp.maximum(cur - n + 1 + k, 0)]
    last = jnp.max(jnp.where(match, slots, -1))
    best_start = jnp.where(last >= 0, last + n, best_start)
    found |= last >= 0
  drafts_K = jax.lax.dynamic_slice_in_dim(tokens_N, best_start, K)
  count = jnp.where(found, jnp.minimum(K, cur + 1 - best_start), 0).astype(jnp.int32)
  return drafts_K, jax.nn.one_hot(drafts_K, vocab), count


# -- one round -----------------------------------------------------------------------------

def _accept(p_KV, q_KV, drafts_K, limit, row_key, index0, params):
  """(number of leading draft tokens kept <= limit, the token after them). index0 is the
  index (from the prompt's end) of drafts_K[0]."""
  K = drafts_K.shape[0]
  p_d = jnp.take_along_axis(p_KV[:K], drafts_K[:, None], axis=-1)[:, 0]
  q_d = jnp.take_along_axis(q_KV, drafts_K[:, None], axis=-1)[:, 0]
  u = jax.vmap(lambda i: jax.random.uniform(_key(row_key, index0 + i, _ACCEPT)))(jnp.arange(K))
  sampled_ok = u * q_d < p_d
  greedy_ok = drafts_K == jnp.argmax(p_KV[:K], axis=-1)
  ok = jnp.where(params.temperature > 0, sampled_ok, greedy_ok) & (jnp.arange(K) < limit)
  n = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))
  p_V = p_KV[n]
  residual = jnp.maximum(p_V - q_KV[jnp.minimum(n, K - 1)], 0.0)
  rejected = n < limit
  mass = jnp.sum(residual)
  dist = jnp.where(rejected & (mass > 0), residual / jnp.where(mass > 0, mass, 1.0), p_V)
  return n, _draw(dist, _key(row_key, index0 + n, _RESIDUAL), params)


def round_row(target, spec: Spec, W: int, params, tokens_N, pad, cache, base, dcache, dbase,
               cur, start, row_key, stop):
  K = spec.num_draft
  if spec.model is not None:
    drafts_K, q_KV, dcache, count = _model_draft(spec, tokens_N, cur, pad, dcache, dbase,
                                                 row_key, start, params)
  else:
    drafts_K, q_KV, count = _ngram_draft(spec, tokens_N, cur, pad, target.cfg.vocab_size)
  block = jnp.concatenate([tokens_N[cur][None], drafts_K])
  logits_TV, cache = _encode_row(target, block, cur, pad, cache, base)
  p_KV = sampling_probs(logits_TV[:, :target.cfg.vocab_size], params)
  # a kept draft token never lies past the slide point or the row's stop
  limit = jnp.minimum(jnp.minimum(count, base + W - 1 - cur), stop - cur - 1)
  n, after = _accept(p_KV, q_KV, drafts_K, limit, row_key, cur + 1 - start, params)
  i = jnp.arange(K + 1)
  new = jnp.where(i < n, jnp.concatenate([drafts_K, drafts_K[-1:]]), after)
  old = jax.lax.dynamic_slice_in_dim(tokens_N, cur + 1, K + 1)
  tokens_N = jax.lax.dynamic_update_slice_in_dim(tokens_N, jnp.where(i <= n, new, old), cur + 1,
                                                 axis=0)
  return tokens_N, cache, dcache, cur + n + 1, limit, n, (new, i <= n), logits_TV


def _active(c: Carry, stop_B):
  return (c.cur_B < stop_B) & ~c.done_B


def _needs_slides(spec: Spec, W: int, c: Carry):
  target = c.cur_B - c.base_B >= W
  if spec.model is None:
    return target, jnp.zeros_like(target)
  return target, c.cur_B - c.draft_base_B >= spec.model.cfg.max_seq_len


def _slid(model: gpt.Decoder, cache_len: int, tokens_N, pad, cur):
  """A fresh cache holding the W//2 slots before cur (decode._slide for one row)."""
  keep = model.cfg.max_seq_len // 2
  base = cur - keep
  cache = model.init_cache(1, cache_len)
  prefix = jax.lax.dynamic_slice_in_dim(tokens_N, base, keep)
  return _encode_row(model, prefix, base, pad, cache, base)[1], base


def _select(mask_B, new, old):
  return jax.tree.map(
      lambda a, b: jnp.where(mask_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def _slide(target, spec: Spec, W: int, c: Carry, stop_B) -> Carry:
  need_t, need_d = _needs_slides(spec, W, c)
  active = _active(c, stop_B)
  need_t, need_d = need_t & active, need_d & active

  def targets(c):
    cache, base = jax.vmap(lambda t, p, cur: _slid(target, W + spec.num_draft, t, p, cur))(
        c.tokens_BN, c.pad_B, c.cur_B)
    return c._replace(cache=_select(need_t, cache, c.cache),
                      base_B=jnp.where(need_t, base, c.base_B))

  def drafts(c):
    cache_len = spec.model.cfg.max_seq_len + spec.num_draft
    cache, base = jax.vmap(lambda t, p, cur: _slid(spec.model, cache_len, t, p, cur))(
        c.tokens_BN, c.pad_B, c.cur_B)
    return c._replace(draft_cache=_select(need_d, cache, c.draft_cache),
                      draft_base_B=jnp.where(need_d, base, c.draft_base_B))

  c = jax.lax.cond(jnp.any(need_t), targets, lambda x: x, c)
  if spec.model is not None:
    c = jax.lax.cond(jnp.any(need_d), drafts, lambda x: x, c)
  return c


def _round(target, spec: Spec, W: int, params, c: Carry, stop_B) -> Carry:
  active = _active(c, stop_B)
  one = lambda t, p, cache, b, dc, db, cur, k, s: round_row(
      target, spec, W, params, t, p, cache, b, dc, db, cur, c.start, k, s)
  tokens, cache, dcache, cur, proposed, accepted, (new_BT, written_BT), _ = jax.vmap(one)(
          c.tokens_BN, c.pad_B, c.cache, c.base_B, c.draft_cache, c.draft_base_B, c.cur_B,
          c.keys_B, stop_B)
  stopped = jnp.any(written_BT & jnp.isin(new_BT, c.stop_ids_K), axis=1)  # ids are >= 0
  # rows that are not active keep their tokens and position; their caches' writes land
  # at or past their position, where nothing reads them before they are rewritten
  return c._replace(
      tokens_BN=jnp.where(active[:, None], tokens, c.tokens_BN), cache=cache,
      draft_cache=dcache, cur_B=jnp.where(active, cur, c.cur_B),
      done_B=c.done_B | (active & stopped),
      proposed_B=c.proposed_B + jnp.where(active, proposed, 0),
      accepted_B=c.accepted_B + jnp.where(active, accepted, 0))


def decode_steps(target: gpt.Decoder, spec: Spec, carry: Carry, num_steps,
                 params: decode.SamplingParams) -> Carry:
  """Decodes until each row has `num_steps` more tokens (a traced count; rows end exactly
  there) or has drawn a stop id. The outer loop slides the caches that are full; the
  inner one runs rounds while none is (no branch on the caches inside it, as in
  decode.decode_steps)."""
  W = target.cfg.max_seq_len
  last = carry.tokens_BN.shape[1] - spec.num_draft - 2  # the last real slot
  stop_B = jnp.minimum(carry.cur_B + num_steps, last)

  def rounds(c):
    c = _slide(target, spec, W, c, stop_B)

    def room(c):
      need_t, need_d = _needs_slides(spec, W, c)
      active = _active(c, stop_B)
      return jnp.any(active) & ~jnp.any(active & (need_t | need_d))
    return jax.lax.while_loop(room, lambda c: _round(target, spec, W, params, c, stop_B), c)

  return jax.lax.while_loop(lambda c: jnp.any(_active(c, stop_B)), rounds, carry)
