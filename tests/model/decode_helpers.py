"""What the decode tests share: three left-padded prompts, jitted forward/encode/generate
over a split model, the check that cached logits equal a full forward, and sharded params."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from treadle.model import decode
from treadle.train import mesh as mesh_lib
from treadle.train import state as state_lib

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]
PROMPT_LEN, TOTAL = 16, 48
GREEDY = decode.SamplingParams(jnp.float32(0), jnp.int32(0), jnp.float32(1))


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, params, tokens):
  """Logits of a full forward pass, no cache."""
  return nnx.merge(graphdef, params)(tokens)[0]


@functools.partial(jax.jit, static_argnums=0)
def encode(graphdef, params, tokens, slot, pad, cache):
  return decode.encode(nnx.merge(graphdef, params), tokens, slot, pad, cache, jnp.int32(0))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(graphdef, cached, params, tokens, pad, key, steps, sampling):
  model = nnx.merge(graphdef, params)
  carry = decode.prefill(model, tokens, pad, PROMPT_LEN, key, sampling)
  loop = decode.decode_steps if cached else decode.recompute_steps
  return loop(model, carry, steps, sampling).tokens_BN


def generate(graphdef, params, steps, cached=True, sampling=GREEDY, seed=0) -> np.ndarray:
  """PROMPTS continued `steps` tokens with the KV cache, or recomputing everything."""
  tokens, pad = decode.left_pad(PROMPTS, TOTAL, PROMPT_LEN)
  return np.asarray(_run(graphdef, cached, params, tokens, pad, jax.random.key(seed),
                         jnp.int32(steps), sampling))


def assert_cached_logits_match_full_forward(cfg, graphdef, params) -> None:
  """Logits of prefill + one-token cached steps over random continuations of PROMPTS equal
  a full forward of each unpadded row, up to the window."""
  tokens, pad = decode.left_pad(PROMPTS, TOTAL, PROMPT_LEN)
  rng = np.random.default_rng(0)
  tokens[:, PROMPT_LEN:] = rng.integers(0, cfg.vocab_size, (len(PROMPTS), TOTAL - PROMPT_LEN))
  cache = nnx.merge(graphdef, params).init_cache(len(PROMPTS), cfg.max_seq_len)
  logits, cache = encode(graphdef, params, tokens[:, :PROMPT_LEN], jnp.int32(0), pad, cache)
  steps = [logits[:, -1]]
  for slot in range(PROMPT_LEN, cfg.max_seq_len):
    logits, cache = encode(graphdef, params, tokens[:, slot:slot + 1], jnp.int32(slot), pad,
                           cache)
    steps.append(logits[:, 0])
  cached = np.stack(steps, axis=1)  # predictions for slots PROMPT_LEN..W
  for row, n_pad in enumerate(pad):
    full = forward(graphdef, params, jnp.asarray(tokens[row:row + 1, n_pad:cfg.max_seq_len]))
    reference = np.asarray(full[0, PROMPT_LEN - 1 - n_pad:, :cfg.vocab_size])
    np.testing.assert_allclose(cached[row, :, :cfg.vocab_size], reference, rtol=1e-5, atol=1e-5)


def shard(cfg, params, rules: str = "fsdp_tp"):
  """Params split over an 8-device (data=2, fsdp=2, tensor=2) mesh."""
  mesh = mesh_lib.make_mesh((2, 2, 2))
  _, _, specs = state_lib.model_graph(cfg)
  return jax.device_put(params, mesh_lib.param_shardings(specs, mesh, mesh_lib.rules(rules)))
