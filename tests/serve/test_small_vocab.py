"""A vocabulary smaller than the most alternatives a request may ask for (a character model
of digits): scores pad with -inf, which are never reported (treadle-serve failed to start on
such a model: top_k of 20 over 16 logits)."""
import jax.numpy as jnp
import numpy as np

from treadle.model import slots
from treadle.serve import engine


def test_scores_of_a_small_vocabulary_pad_with_minus_inf_and_are_not_alternatives():
  logits = jnp.log(jnp.array([[0.2, 0.5, 0.3]]))
  scores = slots._scores(logits, jnp.array([2]))
  assert scores.top_ids.shape == (1, slots.TOP_LOGPROBS)
  assert abs(float(scores.logprob[0]) - np.log(0.3)) < 1e-6
  assert scores.top_ids[0, :3].tolist() == [1, 2, 0]
  assert np.all(np.isneginf(np.asarray(scores.top_logprobs[0, 3:])))
  alternatives = engine._alternatives(np.asarray(scores.top_ids[0]),
                                      np.asarray(scores.top_logprobs[0]), slots.TOP_LOGPROBS)
  assert [i for i, _ in alternatives] == [1, 2, 0]
  assert engine._alternatives(np.asarray(scores.top_ids[0]),
                              np.asarray(scores.top_logprobs[0]), 2) == alternatives[:2]
