"""Speculative decoding end to end: treadle-sample and treadle-serve with a draft model or
n-gram lookup give the greedy text decoding without a draft gives; a draft with another
tokenizer is refused."""
import json
import shutil

import httpx
import pytest

from tests.conftest import run_cli
from tests.serve.conftest import ServerProcess

PROMPTS = ["ROMEO:", "KING HENRY:\nWhat say you", "good night sweet prince"]  # < window
SAMPLE = ["--max_new_tokens", "80", "--temperature", "0", "--json"]


@pytest.fixture(scope="module")
def early_draft(served_run, tmp_path_factory):
  """The served run as of its step-100 checkpoint: the same tokenizer, other weights."""
  draft = tmp_path_factory.mktemp("draft") / "early"
  shutil.copytree(served_run, draft)
  shutil.rmtree(draft / "checkpoints" / "200")
  return draft


def _sample(workdir, *flags) -> dict:
  prompts = [arg for p in PROMPTS for arg in ("--prompt", p)]
  return json.loads(run_cli("treadle.infer.cli", "--workdir", workdir, *prompts, *SAMPLE,
                            *flags).stdout)


@pytest.fixture(scope="module")
def plain(served_run) -> dict:
  return _sample(served_run)


@pytest.mark.parametrize("flags", [("--draft", "ngram"), ("--num_draft_tokens", "3")])
def test_sample_with_a_draft_prints_the_plain_greedy_text(served_run, early_draft, plain, flags):
  if flags[0] == "--num_draft_tokens":
    flags = ("--draft_workdir", str(early_draft), *flags)
  out = _sample(served_run, *flags)
  assert [s["text"] for s in out["samples"]] == [s["text"] for s in plain["samples"]]
  assert plain["acceptance_rate"] is None
  assert 0 < out["acceptance_rate"] < 1  # some proposals kept, some not: both paths ran


def test_the_run_as_its_own_draft_has_every_proposal_kept(served_run, plain):
  out = _sample(served_run, "--draft_workdir", served_run)
  assert [s["text"] for s in out["samples"]] == [s["text"] for s in plain["samples"]]
  assert out["acceptance_rate"] == 1.0


def test_server_with_a_draft_completes_as_sampling_does(served_run, early_draft, plain):
  server = ServerProcess(served_run, f"--draft_workdir={early_draft}", "--max_batch=4")
  try:
    body = {"model": "x", "prompt": PROMPTS, "max_tokens": 80, "temperature": 0, "logprobs": 1}
    reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=300).json()
    assert "choices" in reply, reply
    choices = sorted(reply["choices"], key=lambda c: c["index"])
    assert [c["text"] for c in choices] == [s["text"] for s in plain["samples"]]
    for c in choices:  # every emitted token is scored by the target
      assert len(c["logprobs"]["token_logprobs"]) == len(c["logprobs"]["tokens"]) > 0
      assert all(lp <= 0 for lp in c["logprobs"]["token_logprobs"])
    sampled = {**body, "prompt": PROMPTS[0], "temperature": 0.9, "seed": 3}
    twice = [httpx.post(f"{server.url}/v1/completions", json=sampled, timeout=300)
             for _ in range(2)]
    assert all(r.status_code == 200 for r in twice), twice[0].text
    assert twice[0].json()["choices"][0]["text"] == twice[1].json()["choices"][0]["text"]
  finally:
    server.stop()
  assert any("acceptance rate" in line for line in server.log)


def test_a_draft_with_another_tokenizer_is_refused(served_run, tmp_path):
  text = tmp_path / "other.txt"
  text.write_text("xyz zyx\n" * 4000)  # another character set: another tokenizer
  other = tmp_path / "other"
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", other,
          f"--config.data.path={text}", "--config.train.num_steps=2",
          "--config.train.eval_every=2", "--config.train.checkpoint_every=2")
  proc = run_cli("treadle.infer.cli", "--workdir", served_run, "--prompt", "ROMEO:",
                 "--draft_workdir", other, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and "tokenizer differs" in lines[-1], proc.stderr[-2000:]
  proc = run_cli("treadle.infer.cli", "--workdir", served_run, "--draft", "ngram",
                 "--draft_workdir", other, check=False)
  assert proc.returncode == 2 and "give one draft" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flags,message", [
    (["--draft=ngram", "--num_draft_tokens=16"], "below half the target's context"),
    # configs/tiny.py: 32 slots x 32 tokens x 2 layers x (K, V) x 32 wide x 4 bytes =
    # 0.000488 GiB fits; with 4 spare tokens a slot (36) it is 0.000549 GiB
    (["--draft=ngram", "--max_cache_gib=0.0005"], "and the draft's need"),
])
def test_server_refuses_drafts_it_cannot_hold(served_run, flags, message):
  proc = run_cli("treadle.serve.main", f"--workdir={served_run}", "--port=0", *flags,
                 check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines[-1].startswith("error: ") and message in lines[-1], \
      proc.stderr[-2000:]
