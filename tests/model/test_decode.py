"""Decoding: KV cache == full recomputation, sampling filters, reproducibility, sharding."""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model import decode_helpers as helpers
from tests.model.decode_helpers import GREEDY, PROMPT_LEN, PROMPTS, TOTAL
from treadle.model import decode
from treadle.train import state as state_lib
from treadle.train import config as config_lib

CFG = config_lib.section(
    "model", vocab_size=61, max_seq_len=32, num_layers=2, num_heads=4, embed_dim=32)


def _params(seed=0):
  return state_lib.model_graph(CFG)[0], state_lib.random_params(CFG, seed)


def test_cached_greedy_equals_full_recompute_within_the_window():
  graphdef, params = _params()
  steps = CFG.max_seq_len - PROMPT_LEN - 1  # stays inside the 32-token window
  cached = helpers.generate(graphdef, params, steps)
  assert np.array_equal(cached, helpers.generate(graphdef, params, steps, cached=False))
  for row, prompt in enumerate(PROMPTS):  # and equals plain decoding of the unpadded prompt
    ids = list(prompt)
    for _ in range(steps + 1):
      # right-padded to one shape (one compilation); causality makes the padding invisible
      buffer = np.zeros((1, CFG.max_seq_len), np.int32)
      buffer[0, :len(ids)] = ids
      logits = helpers.forward(graphdef, params, jnp.asarray(buffer))
      ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
    assert ids[len(prompt):] == cached[row, PROMPT_LEN:PROMPT_LEN + steps + 1].tolist()


def _shard(params, rules="fsdp_tp"):
  sharded = helpers.shard(CFG, params, rules)
  qkv = sharded["blocks"][0]["attn"]["qkv"]["w"]
  assert qkv.sharding.shard_shape(qkv.shape) != qkv.shape  # really split
  return sharded


@pytest.mark.parametrize("sharded", [False, pytest.param(True, marks=pytest.mark.devices(8))])
def test_cached_logits_match_full_forward(sharded):
  graphdef, params = _params(1)
  params = _shard(params) if sharded else params
  helpers.assert_cached_logits_match_full_forward(CFG, graphdef, params)


def _greedy_after_slides(graphdef, params, out: np.ndarray, pad) -> np.ndarray:
  """What the sliding cache must produce, recomputed without a cache: once the window is
  full, the last W/2 tokens become the context's start (re-encoded from position 0), and
  each token is the argmax of a full forward over [start, current]."""
  W = CFG.max_seq_len
  expected, base = out.copy(), 0
  for cur in range(PROMPT_LEN, TOTAL - 1):
    if cur - base >= W:
      base = cur - W // 2  # the slide: keep the last W/2 slots
    for row, n_pad in enumerate(pad):
      context = jnp.asarray(out[row:row + 1, max(base, int(n_pad)):cur + 1])
      logits = helpers.forward(graphdef, params, context)[0, -1, :CFG.vocab_size]
      expected[row, cur + 1] = int(jnp.argmax(logits))
  return expected


def test_generation_past_the_window_slides():
  graphdef, params = _params()
  out = helpers.generate(graphdef, params, TOTAL)  # 48 slots > the 32 window: slides at 32
  _, pad = decode.left_pad(PROMPTS, TOTAL, PROMPT_LEN)
  expected = _greedy_after_slides(graphdef, params, out, np.asarray(pad))
  assert TOTAL - 1 - CFG.max_seq_len > 8  # tokens after the slide are compared
  np.testing.assert_array_equal(out[:, PROMPT_LEN:], expected[:, PROMPT_LEN:])
  within = helpers.generate(graphdef, params, CFG.max_seq_len - PROMPT_LEN - 1)
  np.testing.assert_array_equal(out[:, :CFG.max_seq_len], within[:, :CFG.max_seq_len])


@pytest.mark.devices(8)
def test_sharded_params_decode_the_same_tokens():
  graphdef, params = _params(2)
  single = helpers.generate(graphdef, params, 20)
  np.testing.assert_array_equal(helpers.generate(graphdef, _shard(params), 20), single)
  np.testing.assert_array_equal(helpers.generate(graphdef, _shard(params), 20, cached=False),
                                single)


PROBS = np.array([0.4, 0.3, 0.15, 0.1, 0.05])


def _draws(top_k=0, top_p=1.0, temperature=1.0, n=20000, seed=0):
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS)), (n, len(PROBS)))
  params = decode.SamplingParams(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
  keys = decode.row_keys(jax.random.key(seed), n)
  return np.asarray(jax.jit(decode.sample_token)(logits, keys, params))


@pytest.mark.parametrize("top_k,top_p,allowed", [
    (2, 1.0, {0, 1}), (0, 0.6, {0, 1}), (0, 0.75, {0, 1, 2}), (3, 0.5, {0, 1}), (1, 1.0, {0}),
    (0, 1.0, {0, 1, 2, 3, 4}),
])
def test_filters_keep_only_allowed_tokens_and_follow_the_distribution(top_k, top_p, allowed):
  draws = _draws(top_k, top_p)
  counts = collections.Counter(draws.tolist())
  assert set(counts) == allowed
  expected = PROBS[sorted(allowed)] / PROBS[sorted(allowed)].sum()
  observed = np.array([counts[i] for i in sorted(allowed)]) / len(draws)
  # 20000 draws: the standard error of each frequency is < 0.0035; 5 sigma
  np.testing.assert_allclose(observed, expected, atol=0.018)


def test_temperature_sharpens_and_zero_is_greedy():
  cold = collections.Counter(_draws(temperature=0.5).tolist())
  assert cold[0] / 20000 == pytest.approx(0.4 ** 2 / (PROBS ** 2).sum(), abs=0.02)
  assert set(_draws(temperature=0.0, seed=3).tolist()) == {0}


def test_same_seed_same_samples_other_seed_differs():
  graphdef, params = _params()
  sampling = decode.SamplingParams(jnp.float32(1.0), jnp.int32(0), jnp.float32(0.95))
  a = helpers.generate(graphdef, params, 15, sampling=sampling, seed=5)
  b = helpers.generate(graphdef, params, 15, sampling=sampling, seed=5)
  c = helpers.generate(graphdef, params, 15, sampling=sampling, seed=6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def _cache_sized_instructions(hlo: str, cache_elements: int) -> tuple[list[str], list[str]]:
  """(copies, all): instructions in optimised HLO, outside the slide, whose result has a
  layer's K or V cache size (layout may drop the batch-1 axis: sizes are compared); copies
  are those that copy or transpose it."""
  found, sized = [], []
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%(\S+) = f32\[([\d,]*)\]\S* (\w[\w-]*)\(", line)
    if not m or m.group(3) == "parameter" or "/cond/" in line:
      continue  # the slide (a lax.cond once per W/2 tokens) builds a fresh cache: allowed
    name, dims, op = m.groups()
    size = int(np.prod([int(d) for d in dims.split(",") if d]))
    if size != cache_elements:
      continue
    sized.append(line.strip()[:120])
    copies = op in ("copy", "transpose") or name.startswith(("copy", "transpose"))
    if copies and "dynamic-update-slice" not in name:
      found.append(line.strip()[:120])  # (a fusion that updates the cache in place is fine)
  return found, sized


@pytest.mark.parametrize("batch", [1, 4])
def test_decode_loop_updates_the_cache_in_place(batch):
  """Each decoded token writes one slot: the loop must not copy or transpose whole caches
  (XLA:CPU did both, per token and layer, before the cache layout and read order fixes)."""
  # sizes chosen so that no other array in the program has a cache's element count
  cfg = config_lib.section(
      "model", vocab_size=65, max_seq_len=40, num_layers=2, num_heads=2, embed_dim=48)
  graphdef, params = state_lib.model_graph(cfg)[0], state_lib.random_params(cfg, 0)
  tokens, pad = decode.left_pad([[1]] * batch, 96, 16)

  def loop(params, carry):
    return decode.decode_steps(nnx.merge(graphdef, params), carry, jnp.int32(8), GREEDY)

  carry = jax.jit(lambda p, t, n: decode.prefill(nnx.merge(graphdef, p), t, n, 16,
                                                 jax.random.key(0), GREEDY))(params, tokens, pad)
  hlo = jax.jit(loop, donate_argnums=1).lower(params, carry).compile().as_text()
  assert "while" in hlo and "dynamic-update-slice" in hlo  # the real loop's program was read
  cache_elements = batch * cfg.kv_heads * cfg.head_dim * cfg.max_seq_len
  copies, sized = _cache_sized_instructions(hlo, cache_elements)
  # the pattern read the loop's own lines: each layer's K and V cache updates at least
  updates = [line for line in sized if "dynamic-update-slice" in line]
  assert len(updates) >= 2 * cfg.num_layers, sized
  assert copies == []


def _two_sort_filter(logits_BV, params):
  """The filters as first written: top-k, then a fresh sort for top-p."""
  scaled = logits_BV / jnp.maximum(params.temperature, 1e-6)
  V = logits_BV.shape[-1]
  sorted_desc = -jnp.sort(-scaled, axis=-1)
  kth = jnp.take(sorted_desc, jnp.clip(params.top_k - 1, 0, V - 1), axis=-1)[:, None]
  scaled = jnp.where((params.top_k > 0) & (scaled < kth), -jnp.inf, scaled)
  sorted_desc = -jnp.sort(-scaled, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  kept = jnp.sum((jnp.cumsum(probs, axis=-1) - probs) < params.top_p, axis=-1)
  threshold = jnp.take_along_axis(sorted_desc, jnp.maximum(kept, 1)[:, None] - 1, axis=-1)
  return jnp.where(scaled < threshold, -jnp.inf, scaled)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.8), (7, 0.6), (64, 0.3)])
def test_bisected_filters_draw_what_sorting_drew(top_k, top_p):
  """sample_token finds the filters' thresholds by bisection; it must draw exactly the
  tokens of the sorting form (ties included: logits are rounded so many rows repeat values)."""
  logits = jnp.round(jax.random.normal(jax.random.key(1), (256, 65)) * 4) / 2
  params = decode.SamplingParams(jnp.float32(0.8), jnp.int32(top_k), jnp.float32(top_p))
  keys = decode.row_keys(jax.random.key(2), 256)
  expected = jax.vmap(jax.random.categorical)(keys, _two_sort_filter(logits, params))
  got = jax.jit(decode.sample_token)(logits, keys, params)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_filters_off_keep_every_token_even_below_float32_resolution():
  """top_k 0 and top_p 1 filter nothing: with one dominant token the float32 cumulative
  probability reaches 1 before the tail, which the nucleus rule would otherwise cut."""
  logits = jnp.asarray([[0.0] + [-30.0] * 64, [2.0, 1.0] + [-40.0] * 63])
  params = decode.SamplingParams(jnp.float32(0.7), jnp.int32(0), jnp.float32(1.0))
  filtered = jax.jit(decode.filtered_logits)(logits, params)
  np.testing.assert_array_equal(np.asarray(filtered), np.asarray(logits / jnp.float32(0.7)))
  # a filter on still cuts that tail
  on = params._replace(top_p=jnp.float32(0.999))
  assert np.isneginf(np.asarray(jax.jit(decode.filtered_logits)(logits, on))[:, 2:]).all()


@pytest.mark.parametrize("k", [1, 2, 7, 64, 65])
def test_kth_largest_by_bisection_equals_sorting(k):
  """Ties, zeros of both signs, infinities and every sign: the k-th value a sort gives."""
  rng = np.random.default_rng(k)
  x = np.round(rng.normal(size=(6, 65)) * 3) / 2
  x[1] = 0.0
  x[2, ::2] = -0.0
  x[3, :10] = -np.inf
  x[4, -3:] = np.inf
  x[5] = -np.abs(x[5]) - 1e-30
  got = jax.jit(decode.kth_largest)(jnp.asarray(x, jnp.float32), jnp.int32(k))
  expected = -np.sort(-x.astype(np.float32), axis=-1)[:, k - 1]
  np.testing.assert_array_equal(np.asarray(got), expected)


def _nucleus_float64(x: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
  """(kept mask, each token's mass strictly above it) by sorting in float64."""
  x = x.astype(np.float64)
  probs = np.exp(x - x.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  above = np.empty_like(x)
  for r in range(len(x)):
    values, index = np.unique(x[r], return_inverse=True)  # ascending
    mass = np.bincount(index, probs[r])
    above[r] = (mass[::-1].cumsum()[::-1] - mass)[index]  # of the values greater than each
  return above < top_p, above


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.95])
def test_nucleus_threshold_keeps_the_float64_nucleus_of_a_large_vocabulary(top_p):
  """32k tokens, flat and peaked rows: the kept set is the float64 nucleus except for
  tokens whose mass-above is within float32 summation error of top_p."""
  x = np.asarray(jax.random.normal(jax.random.key(3), (6, 4000)), np.float32)
  x = np.concatenate([x, x * 4], axis=0)
  x = np.tile(x, (1, 8))  # 32000 tokens, every value 8 times: ties everywhere
  params = decode.SamplingParams(jnp.float32(1.0), jnp.int32(0), jnp.float32(top_p))
  kept = ~np.isneginf(np.asarray(jax.jit(decode.filtered_logits)(jnp.asarray(x), params)))
  expected, above = _nucleus_float64(x, top_p)
  differ = kept != expected
  assert np.all(np.abs(above[differ] - top_p) < 1e-5), above[differ]
  assert 0 < expected.sum(-1).min() and expected.sum(-1).max() < x.shape[1]  # a real cut
