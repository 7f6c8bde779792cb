"""Packed windows: with segment ids and per-document positions, each document's logits and
loss equal those of its own forward pass; without segment ids the documents do interact."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from treadle.model import gpt
from treadle.train import config as config_lib
from treadle.train.tasks import lm

CFG = config_lib.section("model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4,
                         embed_dim=32)
LENGTHS = (5, 8, 3)  # three documents packed into one window of 16


def _packed(seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (2, 16), 0, CFG.vocab_size)
  segment_ids = jnp.array(sum(([i + 1] * n for i, n in enumerate(LENGTHS)), []))
  positions = jnp.concatenate([jnp.arange(n) for n in LENGTHS])
  return tokens, jnp.broadcast_to(segment_ids, (2, 16)), jnp.broadcast_to(positions, (2, 16))


def _forward(cfg):
  """Jitted logits (eager NNX dispatches op by op: minutes on this CPU)."""
  graphdef, params = nnx.split(gpt.Decoder(cfg, nnx.Rngs(0)))
  return jax.jit(lambda t, p=None, s=None: nnx.merge(graphdef, params)(
      t, positions_BT=p, segment_ids_BT=s)[0])


@pytest.mark.parametrize("options", [{}, {"position": "rope", "num_kv_heads": 2,
                                          "scan_layers": True}])
def test_packed_attention_equals_separate_forward_passes(options):
  forward = _forward(dataclasses.replace(CFG, **options))
  tokens, segment_ids, positions = _packed()
  packed = forward(tokens, positions, segment_ids)
  start = 0
  for n in LENGTHS:
    alone = forward(tokens[:, start:start + n])
    np.testing.assert_allclose(packed[:, start:start + n], alone, rtol=1e-5, atol=1e-5)
    start += n
  mixed = forward(tokens, positions)  # no segments: later documents see earlier ones
  assert not np.allclose(mixed[:, 5:], packed[:, 5:], atol=1e-3)


def test_packed_loss_is_the_mean_over_unmasked_targets():
  model = gpt.Decoder(CFG, nnx.Rngs(0))
  tokens, segment_ids, positions = _packed(1)
  targets = jnp.roll(tokens, -1, axis=1)
  mask = (segment_ids == jnp.roll(segment_ids, -1, axis=1)).astype(jnp.float32).at[:, -1].set(1)
  batch = {"inputs": tokens, "targets": targets, "segment_ids": segment_ids,
           "positions": positions, "loss_mask": mask}
  graphdef, params = nnx.split(model)
  loss, _ = jax.jit(lambda b: lm.LanguageModeling().loss(nnx.merge(graphdef, params), b,
                                                            None))(batch)
  forward = _forward(CFG)
  per_doc, start = [], 0
  for n in LENGTHS:
    logits = forward(tokens[:, start:start + n])
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, targets[:, start:start + n, None], -1)[..., 0]
    per_doc.append(nll * mask[:, start:start + n])
    start += n
  expected = jnp.concatenate(per_doc, axis=1).sum() / mask.sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(mask.sum()) == 2 * (16 - len(LENGTHS) + 1)  # two boundaries masked per row
