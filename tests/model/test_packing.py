"""Packed windows: with segment ids and per-document positions, each document's logits and
loss equal those of its own forward pass; without segment ids the documents do interact."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from treadle.data import corpus
from treadle.data import token_cache
from treadle.data import windows
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


def _pipeline_batch(seed=1) -> tuple[dict, list[np.ndarray]]:
  """Two packed rows as the data pipeline builds them (windows.gather: its segment ids,
  positions and loss mask) from a stream of documents, and those documents."""
  rng = np.random.default_rng(seed)
  lengths = np.array([5, 8, 4] * 2)  # each row of 16 inputs + 1 target holds three whole docs
  stream = rng.integers(0, CFG.vocab_size, lengths.sum()).astype(np.int32)
  store = token_cache.Store(None, [stream], np.array([0, stream.size]),
                            np.concatenate([[0], np.cumsum(lengths)]))
  view = corpus.View.of(store, np.cumsum(lengths) - lengths, lengths)
  batch = windows.gather(view, np.array([0, 17]), 16, packed=True)
  return batch, np.split(stream, np.cumsum(lengths)[:-1])


def test_packed_loss_is_the_mean_of_each_documents_own_loss():
  """The pipeline's packed rows give the loss of the documents trained one by one: nothing
  predicted across a boundary (the mask), nothing attended across it (segments)."""
  batch, docs = _pipeline_batch()
  model = gpt.Decoder(CFG, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  loss, _ = jax.jit(lambda b: lm.LanguageModeling().loss(nnx.merge(graphdef, params), b,
                                                            None))(batch)
  forward, nll = _forward(CFG), []
  for doc in docs:  # each document alone, each of its tokens predicting the next
    logp = jax.nn.log_softmax(forward(jnp.asarray(doc[None, :-1])), -1)
    nll.append(-np.take_along_axis(np.asarray(logp[0]), doc[1:, None], -1)[:, 0])
  np.testing.assert_allclose(loss, np.concatenate(nll).mean(), rtol=1e-5)
