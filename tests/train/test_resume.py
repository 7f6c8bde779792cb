"""Exact resume across processes, SIGKILL at any moment, SIGTERM, and mismatch errors."""
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from treadle.infer import sampler as sampler_lib
from tests.conftest import REPO, child_env, metric_rows, run_cli

N = 10
# decay_steps pinned so that a first process told num_steps=N has the same schedule as 2N
COMMON = ["--config", "configs/tiny.py", "--config.train.log_every=1",
          "--config.train.checkpoint_every=10", f"--config.optimizer.decay_steps={2 * N}",
          "--config.model.dropout=0.1"]


def _train(workdir, text_file, steps, **kw):
  return run_cli("treadle.train.main", *COMMON, "--workdir", workdir, f"--config.data.path={text_file}",
                 f"--config.train.num_steps={steps}", **kw)


def _losses(workdir) -> dict[int, float]:
  """step -> train loss (metric_rows: a step logged twice, by a killed and a resumed process,
  fails)."""
  return {r["step"]: r["train_loss"] for r in metric_rows(workdir) if "train_loss" in r}


def _params(workdir, step):
  return jax.device_get(sampler_lib.Sampler.from_workdir(workdir, step).params)


def _assert_same_run(a, b):
  la, lb = _losses(a), _losses(b)
  assert [la[s] for s in range(N + 1, 2 * N + 1)] == [lb[s] for s in range(N + 1, 2 * N + 1)]
  jax.tree.map(np.testing.assert_array_equal, _params(a, 2 * N), _params(b, 2 * N))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, text_file):
  workdir = tmp_path_factory.mktemp("straight") / "run"
  _train(workdir, text_file, 2 * N)
  return workdir


def test_resume_in_a_new_process_is_bitwise_identical(straight, tmp_path, text_file):
  resumed = tmp_path / "run"
  _train(resumed, text_file, N)
  assert sorted(int(p.name) for p in (resumed / "checkpoints").iterdir()) == [N]
  _train(resumed, text_file, 2 * N)
  _assert_same_run(straight, resumed)


def _launch(workdir, text_file, steps, launcher=("-m", "treadle.train.main"), env=None):
  cmd = [sys.executable, *launcher, *COMMON, "--workdir", str(workdir),
         f"--config.data.path={text_file}", f"--config.train.num_steps={steps}"]
  return subprocess.Popen(cmd, cwd=REPO, env=child_env(**(env or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.time() < deadline, "timed out"
    time.sleep(0.005)


@pytest.mark.processes
def test_sigkill_after_a_completed_checkpoint_resumes_exactly(straight, tmp_path, text_file):
  workdir = tmp_path / "run"
  # step 2N's commit is held back, so the kill always lands before the run could finish
  proc = _launch(workdir, text_file, 2 * N, env={"TREADLE_TEST_SLOW_STEP": str(2 * N),
                                                  "TREADLE_TEST_MARKER": str(tmp_path / "m")},
                 launcher=("tests/train/slow_save_launcher.py",))
  _wait_for(lambda: (workdir / "checkpoints" / str(N)).is_dir(), proc)  # appears on commit
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert not (workdir / "checkpoints" / str(2 * N)).exists()
  _train(workdir, text_file, 2 * N)
  _assert_same_run(straight, workdir)


@pytest.mark.processes
def test_sigkill_while_a_checkpoint_is_written_restores_the_previous_one(tmp_path, text_file):
  workdir, marker = tmp_path / "run", tmp_path / "writing"
  proc = _launch(workdir, text_file, 2 * N, launcher=("tests/train/slow_save_launcher.py",),
                 env={"TREADLE_TEST_SLOW_STEP": str(2 * N), "TREADLE_TEST_MARKER": str(marker)})
  _wait_for(marker.exists, proc)  # step 2N is written, its final rename held back
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert str(N) in steps and str(2 * N) not in steps  # only a temporary dir for 2N
  rows = metric_rows(workdir)
  assert any(r["step"] > N for r in rows)  # the killed process logged past checkpoint N
  out = _train(workdir, text_file, 2 * N)
  assert f"resumed from step {N}" in out.stderr
  assert (workdir / "checkpoints" / str(2 * N)).is_dir()
  # the replayed steps N+1..2N (train and val rows) are in metrics.jsonl once each
  rows = metric_rows(workdir)  # (it asserts that)
  assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 2 * N + 1))
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.processes
def test_sigterm_checkpoints_the_current_step_and_exits_75(tmp_path, text_file):
  workdir = tmp_path / "run"
  proc = _launch(workdir, text_file, 5000)
  _wait_for(lambda: (workdir / "metrics.jsonl").exists()
            and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err[-2000:]
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  stopped = max(steps)
  assert stopped == max(_losses(workdir)) < 5000  # the step it was on when the signal came
  out = _train(workdir, text_file, stopped + 2)
  assert f"resumed from step {stopped}" in out.stderr
  assert max(_losses(workdir)) == stopped + 2
