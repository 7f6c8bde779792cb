"""Speculative decoding: greedy text identical to plain decoding for every kind of draft
(batch 1 and 4, across the slide), and sampled tokens distributed as the target's."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from tests.model import decode_helpers as helpers
from tests.model.decode_helpers import GREEDY, PROMPT_LEN, PROMPTS, TOTAL
from treadle.model import decode
from treadle.model import speculative
from treadle.train import config as config_lib
from treadle.train import state as state_lib

CFG = config_lib.section(
    "model", vocab_size=61, max_seq_len=32, num_layers=2, num_heads=4, embed_dim=32)
# a draft with a shorter window than the target's: it slides on its own
DRAFT = config_lib.section(
    "model", vocab_size=61, max_seq_len=16, num_layers=1, num_heads=2, embed_dim=16)


def _model(cfg, seed):
  return state_lib.model_graph(cfg)[0], state_lib.random_params(cfg, seed)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 7))
def _speculative(graphdef, draft_graphdef, K, params, draft_params, tokens, pad, prompt_len,
                 key, steps, sampling, stop_ids_K=None):
  target = nnx.merge(graphdef, params)
  draft = None if draft_graphdef is None else nnx.merge(draft_graphdef, draft_params)
  spec = speculative.Spec(K, draft)
  carry = speculative.prefill(target, spec, tokens, pad, prompt_len, key, sampling,
                              stop_ids_K=stop_ids_K)
  return speculative.decode_steps(target, spec, carry, steps, sampling)


def _generate(prompts, draft, K, steps=TOTAL, stop_ids=()):
  graphdef, params = _model(CFG, 0)
  draft_graphdef, draft_params = draft or (None, None)
  tokens, pad = decode.left_pad(prompts, TOTAL, PROMPT_LEN)
  carry = _speculative(graphdef, draft_graphdef, K, params, draft_params, tokens, pad,
                       PROMPT_LEN, jax.random.key(0), jnp.int32(steps), GREEDY,
                       decode.stop_ids(stop_ids))
  return np.asarray(carry.tokens_BN)[:, :TOTAL], carry


DRAFTS = {"ngram": None, "untrained_small": (DRAFT, 1), "target_itself": (CFG, 0),
          "untrained_same_size": (CFG, 5)}


@pytest.mark.parametrize("draft_name,K", [("ngram", 3), ("untrained_small", 3),
                                          ("target_itself", 4), ("untrained_same_size", 1),
                                          ("untrained_small", 7)])
def test_greedy_text_is_plain_greedy_text_across_the_slide(draft_name, K):
  draft = DRAFTS[draft_name] and _model(*DRAFTS[draft_name])
  prompts = PROMPTS + [[3, 3, 3, 3, 3, 3]]  # batch 4; rows accept different counts
  plain = helpers.generate(*_model(CFG, 0), TOTAL)  # 48 slots, window 32: slides
  out, carry = _generate(prompts, draft, K)
  assert TOTAL - 1 - CFG.max_seq_len > K  # tokens after the slide are compared
  np.testing.assert_array_equal(out[:3, PROMPT_LEN:], plain[:, PROMPT_LEN:])
  alone, _ = _generate(prompts[:1], draft, K)  # batch 1: the same text
  np.testing.assert_array_equal(alone[0, PROMPT_LEN:], out[0, PROMPT_LEN:])
  assert np.all(np.asarray(carry.cur_B) == TOTAL - 1)
  proposed, accepted = np.asarray(carry.proposed_B), np.asarray(carry.accepted_B)
  assert np.all(accepted <= proposed) and proposed.sum() > 0
  if draft_name == "target_itself":  # the target's own proposals are all kept
    np.testing.assert_array_equal(accepted, proposed)


def test_rows_end_exactly_at_their_step_count():
  out, carry = _generate(PROMPTS, _model(CFG, 0), 4, steps=5)  # all 4 would be accepted
  assert np.all(np.asarray(carry.cur_B) == PROMPT_LEN + 5)
  plain = helpers.generate(*_model(CFG, 0), 5)
  np.testing.assert_array_equal(out[:, :PROMPT_LEN + 6], plain[:, :PROMPT_LEN + 6])


def test_a_stop_id_ends_its_row_and_the_others_go_on():
  plain = helpers.generate(*_model(CFG, 0), TOTAL)
  at = PROMPT_LEN + 6
  stop = int(plain[0, at])
  first = PROMPT_LEN + int(np.argmax(plain[0, PROMPT_LEN:] == stop))  # its first occurrence
  out, carry = _generate(PROMPTS, _model(CFG, 0), 4, stop_ids=[stop])
  cur, done = np.asarray(carry.cur_B), np.asarray(carry.done_B)
  assert done[0] and first <= cur[0] <= first + 4  # it ended in the round that drew it
  np.testing.assert_array_equal(out[0, PROMPT_LEN:first + 1], plain[0, PROMPT_LEN:first + 1])
  for row in (1, 2):  # rows that never draw it run to the end
    if stop not in plain[row, PROMPT_LEN:].tolist():
      assert cur[row] == TOTAL - 1 and not done[row]


# -- the sampling distribution ----------------------------------------------------------

SMALL = config_lib.section(
    "model", vocab_size=4, vocab_multiple=1, max_seq_len=16, num_layers=1, num_heads=2,
    embed_dim=16)
NEW = 3  # tokens compared jointly: the first from prefill, then two from speculative rounds


def _peaked(cfg, seed, scale):
  """A random model whose next-token distributions are far from uniform."""
  graphdef, params = _model(cfg, seed)
  return graphdef, jax.tree.map(lambda x: x * scale, params)


def _exact_joint(graphdef, params, prompt, sampling) -> dict[tuple, float]:
  """P(the NEW tokens after `prompt`) under the target's sampling distribution."""
  model = nnx.merge(graphdef, params)
  joint = {}
  for seq in itertools.product(range(SMALL.vocab_size), repeat=NEW):
    tokens = jnp.asarray([prompt + list(seq)], jnp.int32)
    logits = model(tokens)[0][0, len(prompt) - 1:len(prompt) + NEW - 1, :SMALL.vocab_size]
    probs = speculative.sampling_probs(logits, sampling)
    joint[seq] = float(np.prod([probs[i, t] for i, t in enumerate(seq)]))
  return joint


@pytest.mark.parametrize("draft_kind,sampling,prompt", [
    ("model", decode.SamplingParams(jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0)),
     [1, 2, 1, 2, 1]),
    # a prompt the target tends to continue as it began, so n-gram proposals are often kept
    ("ngram", decode.SamplingParams(jnp.float32(0.8), jnp.int32(3), jnp.float32(1.0)),
     [1, 0, 2, 2, 2]),
])
def test_sampled_tokens_follow_the_target_distribution(draft_kind, sampling, prompt):
  target = _peaked(SMALL, 0, 4.0)
  draft = _peaked(SMALL, 7, 4.0) if draft_kind == "model" else None
  rows = 4000
  graphdef, params = target
  draft_graphdef, draft_params = draft or (None, None)
  tokens, pad = decode.left_pad([prompt] * rows, 16, len(prompt))
  carry = _speculative(graphdef, draft_graphdef, 2, params, draft_params, tokens, pad,
                       len(prompt), jax.random.key(0), jnp.int32(NEW - 1), sampling)
  drawn = np.asarray(carry.tokens_BN)[:, len(prompt):len(prompt) + NEW]
  assert np.asarray(carry.accepted_B).sum() > 0.2 * np.asarray(carry.proposed_B).sum()
  joint = _exact_joint(graphdef, params, prompt, sampling)
  cells = sorted(joint, key=joint.get, reverse=True)
  counts = collections_counts(drawn)
  observed = np.array([counts.get(c, 0) for c in cells], float)
  expected = np.array([joint[c] for c in cells]) * rows
  # pool the rare cells so every expected count is >= 5 (the chi-square approximation)
  keep = expected >= 5
  observed = np.append(observed[keep], observed[~keep].sum())
  expected = np.append(expected[keep], expected[~keep].sum())
  assert keep.sum() >= 8  # enough cells for the test to have power
  expected *= rows / expected.sum()  # the float32 probabilities sum to 1 within ~1e-7
  assert stats.chisquare(observed, expected).pvalue > 1e-3
  if draft is not None:  # the draft's own distribution is far off: the test can tell
    own = _exact_joint(*draft, prompt, sampling)
    assert 0.5 * sum(abs(own[c] - joint[c]) for c in cells) > 0.2


def collections_counts(rows: np.ndarray) -> dict[tuple, int]:
  out: dict[tuple, int] = {}
  for row in map(tuple, rows.tolist()):
    out[row] = out.get(row, 0) + 1
  return out


def test_settings_the_loop_cannot_honour_are_refused():
  graphdef, params = _model(DRAFT, 1)
  draft = nnx.merge(graphdef, params)
  with pytest.raises(ValueError, match="num_draft_tokens=0"):
    speculative.check(speculative.Spec(0), 32)
  with pytest.raises(ValueError, match="half the draft's context"):
    speculative.check(speculative.Spec(8, draft), 32)
  with pytest.raises(ValueError, match="half the target's context"):
    speculative.check(speculative.Spec(16), 32)
