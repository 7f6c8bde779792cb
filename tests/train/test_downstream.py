"""eval.tasks: multiple-choice accuracy inside the training loop equals the same scoring
computed outside it, from the checkpoint; bad task specs and files are one line, exit 2."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import metric_rows, run_cli
from treadle.data import tokenizers
from treadle.infer import sampler as sampler_lib
from treadle.train import downstream

STEPS = 30
WINDOW = 32  # configs/tiny.py: data.seq_len, the model's context


def make_rows(text: str, n: int, seed: int) -> list[dict]:
  """Which 8 characters follow a passage: the true ones or 2 others from the text. Contexts
  of 20-60 characters: the longer ones exceed the window and are cut from the left."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    at = int(rng.integers(0, len(text) - 200))
    context = text[at:at + int(rng.integers(20, 60))]
    choices = [text[at + len(context):at + len(context) + int(rng.integers(3, 9))]]
    for _ in range(2):
      other = int(rng.integers(0, len(text) - 20))
      choices.append(text[other:other + int(rng.integers(3, 9))])
    label = i % 3
    choices[0], choices[label] = choices[label], choices[0]
    rows.append({"context": context, "choices": choices, "label": label})
  return rows


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, text_file):
  root = tmp_path_factory.mktemp("downstream")
  rows = make_rows(text_file.read_text(), 24, 0)
  (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (root / "mc2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
  workdir = root / "run"
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", f"--config.train.num_steps={STEPS}",
          f"--config.eval.tasks=mc={root / 'mc.jsonl'}, short={root / 'mc2.jsonl'}")
  return workdir, rows


def _loglik(sampler, forward, context: str, choice: str) -> float:
  """Summed log-probability of `choice` after `context` (the last WINDOW - 1 tokens, as
  lm-eval's local-completions keeps with max_length = WINDOW), with the whitespace ending the
  context scored as part of it (lm-eval moves it there)."""
  ids = [int(t) for t in sampler.tokenizer.encode(context + choice)][-(WINDOW - 1):]
  n = len(sampler.tokenizer.encode(choice)) + len(context) - len(context.rstrip())
  padded = np.zeros((1, WINDOW), np.int32)  # right padding: invisible to a causal model
  padded[0, :len(ids) - 1] = ids[:-1]
  logp = np.asarray(forward(sampler.params, jnp.asarray(padded))[0], np.float64)
  return float(sum(logp[t, ids[t + 1]] for t in range(len(ids) - 1 - n, len(ids) - 1)))


def outside_the_loop(workdir, rows) -> dict[str, float]:
  sampler = sampler_lib.Sampler.from_workdir(workdir, STEPS, mesh_shape=(1, 1, 1),
                                             devices=jax.devices()[:1])
  forward = jax.jit(lambda params, tokens: jax.nn.log_softmax(
      nnx.merge(sampler.graphdef, params)(tokens)[0].astype(jnp.float32)))
  acc = acc_norm = 0
  for row in rows:
    ll = np.array([_loglik(sampler, forward, row["context"], c) for c in row["choices"]])
    acc += int(np.argmax(ll) == row["label"])
    acc_norm += int(np.argmax(ll / np.array([len(c) for c in row["choices"]])) == row["label"])
  return {"acc": acc / len(rows), "acc_norm": acc_norm / len(rows)}


def test_in_loop_accuracy_equals_scoring_the_checkpoint(scored_run):
  workdir, rows = scored_run
  evals = [r for r in metric_rows(workdir) if "eval/mc/acc" in r]
  assert [r["step"] for r in evals] == [10, 20, 30]  # every evaluation (tiny: eval_every 10)
  assert all("val_loss" in r and "eval/short/acc_norm" in r for r in evals)
  assert any(len(r["context"]) + min(map(len, r["choices"])) > WINDOW - 1 for r in rows)
  assert any(r["context"] != r["context"].rstrip() for r in rows)
  expected = outside_the_loop(workdir, rows)
  assert evals[-1]["eval/mc/acc"] == pytest.approx(expected["acc"], abs=1e-9)
  assert evals[-1]["eval/mc/acc_norm"] == pytest.approx(expected["acc_norm"], abs=1e-9)
  assert evals[-1]["eval/short/acc"] == pytest.approx(
      outside_the_loop(workdir, rows[:10])["acc"], abs=1e-9)


def test_request_layout_follows_lm_eval():
  """Trailing whitespace of the context moves into the continuation; the continuation's
  tokens are those after the context's in the encoding of the whole."""
  class Words:  # a tokenizer where "a b" != "a" + " b": one id per word with its leading space
    def encode(self, text):
      import re
      return np.array([hash(w) % 97 for w in re.findall(r"\s*\S+|\s+$", text)])
  tokens, scored = downstream._request(Words(), "the cat ", "sat", 8)
  assert scored == 1 and len(tokens) == 3  # "the", " cat", " sat"
  tokens, scored = downstream._request(Words(), "a b c d e f g h i j", " k", 4)
  assert len(tokens) == 3 and scored == 1  # cut from the left to window - 1


@pytest.mark.parametrize("spec,rows,match", [
    ("mc", None, "'mc' is not NAME=PATH.jsonl"),
    ("mc={missing}", None, "mc: no file"),
    ("mc={file},mc={file}", [{"context": "ab", "choices": ["c", "d"], "label": 0}],
     "task name 'mc' is repeated"),
    ("mc={file}", [{"context": "ab", "choices": ["c", "d"], "label": 2}],
     "mc.jsonl:1: label 2 is not an index into its 2 choices"),
    ("mc={file}", [{"context": "ab", "choices": ["c"], "label": 0}], "mc.jsonl:1: needs"),
    ("mc={file}", [{"context": "", "choices": ["c", "d"], "label": 0}], "empty context"),
    ("mc={file}", [{"context": "ab", "choices": ["c", "\u00e9"], "label": 0}], "mc: row 1:"),
])
def test_bad_tasks_are_one_line_errors(tmp_path, spec, rows, match):
  file = tmp_path / "mc.jsonl"
  if rows is not None:
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
  tokenizer = tokenizers.CharTokenizer("abcd")
  with pytest.raises(downstream.TaskError, match=re.escape(match)) as raised:
    downstream.load(spec.format(file=file, missing=tmp_path / "no.jsonl"), tokenizer, WINDOW)
  assert "\n" not in str(raised.value)


def test_a_bad_task_exits_2_in_one_line_and_writes_nothing(tmp_path, text_file):
  file = tmp_path / "mc.jsonl"
  file.write_text(json.dumps({"context": "ab", "choices": ["c", "d"], "label": 5}) + "\n")
  workdir = tmp_path / "run"
  proc = run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
                 f"--config.data.path={text_file}", f"--config.eval.tasks=mc={file}",
                 check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and "label 5" in lines[0], proc.stderr
  assert not workdir.exists()
