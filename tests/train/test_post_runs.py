"""Post-training runs from a trained base: SFT then sampling, DPO's reference, GRPO's exact
resume, and bad input (one line, nothing written; a reward failing mid-run exits 1 with the
last checkpoint intact and resumable)."""
import json
import math
import pathlib
import random

import jax
import numpy as np
import pytest

from tests.conftest import run_cli
from treadle.configs import base
from treadle.configs import tiny
from treadle.infer import sampler as sampler_lib
from treadle.train import checkpoint
from treadle.train import config as config_lib
from treadle.train import loop
from treadle.train import rewards

REWARD = """
import os

def exact(prompt, completion, example):
  if os.environ.get("FAIL_REWARD"):
    raise ZeroDivisionError("division by zero")
  return float(completion == str(example["answer"]))

def partial(prompt, completion, example):
  return sum(a == b for a, b in zip(completion, str(example["answer"]))) / 3

def text(prompt, completion, example):
  return "high"
"""


def _sums(rng, n):
  return [(a, b) for a, b in ((rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n))]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> pathlib.Path:
  """A noisy-sums corpus, SFT rows, preference pairs, GRPO prompts and a reward file."""
  root = tmp_path_factory.mktemp("post")
  rng = random.Random(0)
  corpus = [f"{a}+{b}={a + b if rng.random() < 0.5 else rng.randint(20, 198)}"
            for a, b in _sums(rng, 4000)]
  (root / "corpus.txt").write_text("\n".join(corpus) + "\n")
  write = lambda name, rows: (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
  write("sft.jsonl", [{"prompt": f"{a}+{b}=", "completion": str(a + b)}
                      for a, b in _sums(rng, 120)])
  write("pairs.jsonl", [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
                        for a, b in _sums(rng, 120)])
  write("prompts.jsonl", [{"prompt": f"{a}+{b}=", "answer": a + b} for a, b in _sums(rng, 64)])
  (root / "reward.py").write_text(REWARD)
  return root


def _config(task: str, **sections) -> config_lib.RunConfig:
  c = base.get_config(task).to_dict()
  for name, values in sections.items():
    c[name] = {**c[name], **values}
  return config_lib.split(c)


SMALL_RUN = dict(batch_size=8, log_every=1, eval_every=5, checkpoint_every=5)


@pytest.fixture(scope="module")
def base_run(files, tmp_path_factory) -> pathlib.Path:
  c = tiny.get_config().to_dict()
  c["data"]["path"] = str(files / "corpus.txt")
  c["train"].update(num_steps=40, eval_every=20, checkpoint_every=20)
  workdir = tmp_path_factory.mktemp("base") / "run"
  loop.train(config_lib.split(c), workdir)
  return workdir


def _rows(workdir) -> list[dict]:
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_sft_learns_the_answers_and_its_run_samples(base_run, files, tmp_path):
  cfg = _config("sft", data={"path": str(files / "sft.jsonl"), "seq_len": 12},
                train={**SMALL_RUN, "num_steps": 30, "init_from": str(base_run), "eval_every": 10},
                optimizer={"learning_rate": 3e-3, "warmup_steps": 2})
  summary = loop.train(cfg, tmp_path / "sft")
  val = [r["val_loss"] for r in _rows(tmp_path / "sft") if "val_loss" in r]
  # step 0 (the base), 10, 20, 30: the held-out answer loss falls at each evaluation
  assert len(val) == 4 and val[0] > val[1] > val[2] > val[3], val
  assert math.isfinite(summary["test_loss"])
  sampler = sampler_lib.Sampler.from_workdir(tmp_path / "sft")
  assert sampler.cfg.task == "sft" and sampler.cfg.model == config_lib.from_run(base_run).model
  out = sampler.generate(["12+34="], max_new_tokens=5, temperature=0.0)[0]
  assert out.finish_reason in ("stop", "length") and set(out.text) <= set("0123456789+=\n")


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_dpo_starts_at_its_reference(base_run, files, tmp_path, lora_rank):
  """Step 1's policy is the init_from model (LoRA: zero adapters), so every pair's implicit
  reward is 0 and the loss log 2: the reference is the base, adapters left out."""
  cfg = _config("dpo", data={"path": str(files / "pairs.jsonl"), "seq_len": 12},
                dpo={"beta": 0.5}, finetune={"lora_rank": lora_rank},
                train={**SMALL_RUN, "num_steps": 10, "init_from": str(base_run)},
                optimizer={"learning_rate": 3e-3, "warmup_steps": 1})
  loop.train(cfg, tmp_path / "dpo")
  rows = _rows(tmp_path / "dpo")
  first = next(r for r in rows if r.get("step") == 1 and "train_loss" in r)
  assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
  assert first["train_reward_margin"] == pytest.approx(0.0, abs=1e-6)
  vals = [r for r in rows if "val_reward_accuracy" in r]
  # logged before training: the held-out pairs under the starting policy, equal to its reference
  assert vals[0]["step"] == 0 and vals[0]["val_reward_margin"] == pytest.approx(0.0, abs=1e-6)
  assert vals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
  assert vals[-1]["val_reward_margin"] > 0  # training moved the policy toward `chosen`


def _grpo(base_run, files, steps, **rl):
  return _config("grpo", rl={"prompts": str(files / "prompts.jsonl"),
                             "reward": f"{files / 'reward.py'}:partial", "group_size": 2,
                             "max_new_tokens": 4, "kl_coef": 0.05, **rl},
                 train={**SMALL_RUN, "num_steps": steps, "eval_every": 2,
                        "checkpoint_every": 2, "init_from": str(base_run)},
                 optimizer={"learning_rate": 1e-3, "warmup_steps": 1, "decay_steps": 4})


def _final_params(workdir, step):
  return jax.device_get(sampler_lib.Sampler.from_workdir(workdir, step).params)


def test_grpo_resumed_equals_straight(base_run, files, tmp_path):
  loop.train(_grpo(base_run, files, 4), tmp_path / "straight")
  loop.train(_grpo(base_run, files, 2), tmp_path / "resumed")
  loop.train(_grpo(base_run, files, 4), tmp_path / "resumed")
  straight, resumed = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
  sampled = lambda rows: [(r["step"], r["train_reward_mean"], r["train_loss"], r["train_kl"])
                          for r in rows if "train_reward_mean" in r]
  assert sampled(resumed) == sampled(straight) and len(sampled(straight)) == 4
  assert any(r["train_kl"] > 0 for r in straight if "train_kl" in r)  # the policy moved
  a, b = _final_params(tmp_path / "straight", 4), _final_params(tmp_path / "resumed", 4)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  evaluations = [r for r in straight if "val_reward_mean" in r]
  assert [r["step"] for r in evaluations] == [0, 2, 4]  # step 0: the init_from model
  assert evaluations == [r for r in resumed if "val_reward_mean" in r]


@pytest.mark.parametrize("change,message", [
    ({"rl": {"reward": "nowhere.py:f"}}, r"rl.reward='nowhere.py:f': no such file"),
    ({"rl": {"reward": "REWARD:missing"}}, r"has no function 'missing'"),
    ({"rl": {"reward": "no_such_module_x:f"}}, r"no module 'no_such_module_x'"),
    ({"rl": {"reward": "REWARD"}}, r'use "path/to/file.py:function"'),
    ({"rl": {"prompts": "PROMPTS.missing"}}, r"rl.prompts='.*missing': no such file"),
    ({"train": {"init_from": ""}}, r"task=grpo needs train.init_from"),
    ({"model": {"embed_dim": 64}}, r"model.embed_dim=64: the model comes from train.init_from"),
    ({"rl": {"max_new_tokens": 40}}, r"rl.max_new_tokens=40 leaves no room for a prompt"),
])
def test_bad_grpo_input_is_one_error_and_writes_nothing(base_run, files, tmp_path, change,
                                                        message):
  c = _grpo(base_run, files, 2).to_dict()
  for section, values in change.items():
    c[section].update({k: v.replace("REWARD", str(files / "reward.py")).replace(
        "PROMPTS", str(files / "prompts.jsonl")) if isinstance(v, str) else v
        for k, v in values.items()})
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    loop.train(config_lib.split(c), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_reward_that_returns_no_number_stops_the_run(base_run, files, tmp_path):
  # the first call scores the starting model's greedy answers, before step 1
  with pytest.raises(rewards.RewardError, match=r"rl.reward=.*:text' returned 'high' \(str\), "
                     r"not a finite number \(on evaluation, prompt row \d+\)"):
    loop.train(_grpo(base_run, files, 2, reward=f"{files / 'reward.py'}:text"), tmp_path / "r")


def test_prompts_longer_than_the_context_are_skipped_and_counted(base_run, files, tmp_path,
                                                                  caplog):
  long_rows = (files / "prompts.jsonl").read_text() + json.dumps(
      {"prompt": "1+" * 20 + "1=", "answer": 21}) + "\n"
  (tmp_path / "prompts.jsonl").write_text(long_rows)
  cfg = _grpo(base_run, files, 1, prompts=str(tmp_path / "prompts.jsonl"))
  loop.train(cfg, tmp_path / "run")
  assert "1 of 65 rows skipped: longer than max_seq_len - rl.max_new_tokens = 28" in caplog.text


def test_a_malformed_row_is_one_error_naming_file_and_line_and_writes_nothing(base_run,
                                                                             tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "1+2=", "completion"\n')
  cfg = _config("sft", data={"path": str(bad)}, train={"init_from": str(base_run)})
  with pytest.raises(ValueError) as error:
    loop.train(cfg, tmp_path / "sft")
  assert str(error.value) == f"{bad}:2: not valid JSON (Expecting ':' delimiter)"
  assert not (tmp_path / "sft").exists()


def test_a_reward_failing_mid_run_exits_1_and_the_run_resumes(base_run, files, tmp_path):
  """From the command line: `error:` naming the reward and the step, exit code 1, the last
  checkpoint intact; the same command without the failure resumes from it."""
  workdir = tmp_path / "grpo"
  reward = f"{files / 'reward.py'}:exact"
  loop.train(_grpo(base_run, files, 1, reward=reward), workdir)
  args = ["--config", "configs/base.py:grpo", "--workdir", workdir,
          f"--config.train.init_from={base_run}", f"--config.rl.prompts={files / 'prompts.jsonl'}",
          f"--config.rl.reward={reward}", "--config.rl.group_size=2",
          "--config.rl.max_new_tokens=4", "--config.rl.kl_coef=0.05",
          "--config.train.batch_size=8", "--config.train.log_every=1",
          "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
          "--config.optimizer.learning_rate=0.001", "--config.optimizer.warmup_steps=1",
          "--config.optimizer.decay_steps=4", "--config.train.num_steps=3"]
  proc = run_cli("treadle.train.main", *args, env={"FAIL_REWARD": "1"}, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f"error: rl.reward='{reward}' raised ZeroDivisionError: division by zero (on step 2, "
      "prompt row"), proc.stderr[-2000:]
  assert [p.name for p in checkpoint.directory(workdir).iterdir() if p.name.isdigit()] == ["1"]
  summary = loop.train(_grpo(base_run, files, 3, reward=reward), workdir)  # resumes at step 1
  assert summary["step"] == 3 and summary["outcome"] == "completed"


def test_an_moe_model_post_trains_on_its_objective_plus_its_router_losses(files, tmp_path):
  c = tiny.get_config().to_dict()
  c["data"]["path"] = str(files / "corpus.txt")
  c["model"].update(num_experts=4, experts_per_token=2)
  c["train"].update(num_steps=6, eval_every=6, checkpoint_every=6)
  loop.train(config_lib.split(c), tmp_path / "base")
  cfg = _config("sft", data={"path": str(files / "sft.jsonl"), "seq_len": 12},
                train={**SMALL_RUN, "num_steps": 3, "init_from": str(tmp_path / "base")})
  loop.train(cfg, tmp_path / "sft")
  rows = [r for r in _rows(tmp_path / "sft") if "train_loss" in r]
  assert len(rows) == 3
  for r in rows:
    assert r["train_moe_aux_loss"] > 0 and "train_expert_load/layer0/e3" in r
    assert r["train_loss"] == pytest.approx(r["train_objective"] + 0.01 * r["train_moe_aux_loss"],
                                            rel=1e-5)
  val = [r for r in _rows(tmp_path / "sft") if "val_loss" in r]
  assert len(val) == 2 and all("val_moe_aux_loss" in r and "val_objective" not in r for r in val)
