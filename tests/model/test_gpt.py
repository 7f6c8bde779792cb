"""The decoder: shapes, dtypes, jit, causality, padding mask, and that it can learn."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from treadle.model import gpt
from treadle.train import config as config_lib

CFG = config_lib.section(
    "model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32)


def _tokens(seed=0, shape=(3, 16)):
  return jax.random.randint(jax.random.key(seed), shape, 0, CFG.vocab_size)


def test_shapes_dtypes_and_jit_agree():
  model = gpt.Decoder(CFG, nnx.Rngs(0))
  tokens = _tokens()
  eager, _ = model(tokens)
  graphdef, params = nnx.split(model)
  jitted, _ = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens)
  assert eager.shape == (3, 16, CFG.padded_vocab_size) and eager.dtype == jnp.float32
  assert CFG.padded_vocab_size == 64
  real = eager[..., :CFG.vocab_size]
  assert bool(jnp.all(jnp.isfinite(real)))
  assert bool(jnp.all(eager[..., CFG.vocab_size:] == -jnp.inf))  # padding never predicted
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits():
  model = gpt.Decoder(CFG, nnx.Rngs(0))
  a = _tokens(1)
  b = a.at[:, 10:].set((a[:, 10:] + 7) % CFG.vocab_size)
  la, _ = model(a)
  lb, _ = model(b)
  np.testing.assert_array_equal(la[:, :10], lb[:, :10])
  assert not np.allclose(la[:, 10:, :CFG.vocab_size], lb[:, 10:, :CFG.vocab_size])


def test_bfloat16_compute_variant_runs_close_to_float32():
  bf16 = dataclasses.replace(CFG, compute_dtype="bfloat16")
  assert bf16 != CFG
  tokens = _tokens(2)
  l32, _ = gpt.Decoder(CFG, nnx.Rngs(0))(tokens)
  l16, _ = gpt.Decoder(bf16, nnx.Rngs(0))(tokens)
  assert l16.dtype == jnp.float32  # logits always fp32
  real = slice(0, CFG.vocab_size)
  l32, l16 = np.asarray(l32[..., real]), np.asarray(l16[..., real])
  assert not np.array_equal(l32, l16)

  def relative_error(x):
    return np.linalg.norm(x - l32) / np.linalg.norm(l32)
  # bf16 keeps 8 significant bits (2^-8 = 0.4%); measured 0.41% here. The logits are ~0.1
  # in size, so an absolute bound would pass a broken path; 2% relative fails a 5% error.
  assert relative_error(l16) < 0.02
  # and it is bf16 that rounds: float16 (11 bits) in its place measured 0.05%, fp32 ~1e-7
  assert relative_error(l16) > 1e-3


def test_dropout_is_active_only_with_a_key():
  cfg = dataclasses.replace(CFG, dropout=0.5)
  model = gpt.Decoder(cfg, nnx.Rngs(0))
  tokens = _tokens(3)
  plain1, _ = model(tokens)
  plain2, _ = model(tokens)
  dropped, _ = model(tokens, dropout_key=jax.random.key(0))
  np.testing.assert_array_equal(plain1, plain2)
  assert not np.allclose(plain1[..., :cfg.vocab_size], dropped[..., :cfg.vocab_size])


def test_overfits_one_batch():
  model = gpt.Decoder(CFG, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tokens = _tokens(4, (4, 17))
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
      return gpt.cross_entropy(logits, tokens[:, 1:])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(150):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[0] > 3.5  # ~ln(61) at init
  assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("field,value", [("num_heads", 5), ("dropout", 1.0),
                                         ("compute_dtype", "float16"), ("num_layers", 0)])
def test_bad_model_config_is_a_clear_error(field, value):
  with pytest.raises(ValueError, match=f"model.{field}"):
    dataclasses.replace(CFG, **{field: value})
