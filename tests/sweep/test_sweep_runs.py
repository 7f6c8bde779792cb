"""treadle-sweep end to end with real (tiny) trainings: failure isolation, skipping finished
trials, resuming interrupted ones, the per-trial lock, and the SLURM array script."""
import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from treadle.sweep import runner
from treadle.sweep import spec
from treadle.common import fileio
from treadle.train import interrupts
from tests.conftest import REPO, child_env, run_cli


def _sweep_file(tmp_path, text_file, axes: str = "[]", seeds: str = "()", **fixed):
  fixed = {"data.path": str(text_file), "train.num_steps": 10, **fixed}
  path = tmp_path / "sweep.py"
  path.write_text("from treadle.sweep import spec\n\ndef get_sweep():\n"
                  f"  return spec.Sweep(name='s', base_config='configs/tiny.py', fixed={fixed!r},"
                  f" axes={axes}, seeds={seeds})\n")
  return path


def _popen(*args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "treadle.sweep.cli", *map(str, args)], cwd=REPO,
                          env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.processes
def test_a_failing_trial_is_recorded_the_rest_run_and_a_rerun_skips_finished(tmp_path,
                                                                              text_file):
  path = _sweep_file(tmp_path, text_file, "[spec.Grid({'model.num_heads': [5, 4]})]")
  root = tmp_path / "root"
  layout = runner.Layout(root)
  first = run_cli("treadle.sweep.cli", path, "--root", root, check=False)
  assert first.returncode == 1, first.stderr
  bad, good = runner.read_status(layout, "num_heads5"), runner.read_status(layout, "num_heads4")
  assert bad["state"] == "failed"
  assert bad["error"] == ("exit 2: error: model.embed_dim=32 is not divisible by "
                          "model.num_heads=5")
  assert good["state"] == "finished" and [a["returncode"] for a in good["attempts"]] == [0]
  metrics = (layout.workdir("num_heads4") / "metrics.jsonl").read_text()
  assert '"test_loss"' in metrics.splitlines()[-1]
  md = (root / "report.md").read_text()
  assert "| **num_heads4** | 4 | finished | 10 |" in md and "| num_heads5 | 5 | failed |" in md
  assert (root / "curves.png").exists() and (root / "metric_vs_model.num_heads.png").exists()

  second = run_cli("treadle.sweep.cli", path, "--root", root, check=False)
  assert second.returncode == 1
  assert "num_heads4: already finished, skipped" in second.stdout
  assert (layout.workdir("num_heads4") / "metrics.jsonl").read_text() == metrics
  assert len(runner.read_status(layout, "num_heads4")["attempts"]) == 1
  assert len(runner.read_status(layout, "num_heads5")["attempts"]) == 2  # failures are retried


@pytest.mark.processes
def test_sigterm_interrupts_the_sweep_and_a_rerun_resumes_the_trial(tmp_path, text_file):
  path = _sweep_file(tmp_path, text_file, **{"train.num_steps": 400, "train.eval_every": 200,
                                             "train.checkpoint_every": 400})
  layout = runner.Layout(tmp_path / "root")
  proc = _popen(path, "--root", layout.root)
  metrics, deadline = layout.workdir("base") / "metrics.jsonl", time.time() + 180
  while not (metrics.exists() and metrics.read_text().count("\n") >= 1):  # training under way
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=180)
  assert proc.returncode == interrupts.EXIT_CODE, out + err
  assert runner.read_status(layout, "base")["state"] == "interrupted"
  saved = [int(p.name) for p in (layout.workdir("base") / "checkpoints").iterdir()]
  assert len(saved) == 1 and 0 < saved[0] < 400  # checkpointed where it stopped

  run_cli("treadle.sweep.cli", path, "--root", layout.root)
  assert f"resumed from step {saved[0]}" in layout.log("base").read_text()
  rows = runner.read_metrics(layout.workdir("base"))
  assert rows[-1]["step"] == 400 and "test_loss" in rows[-1]
  assert [r["step"] for r in rows if "val_loss" in r] == [200, 400]
  attempts = runner.read_status(layout, "base")["attempts"]
  assert [a["returncode"] for a in attempts] == [interrupts.EXIT_CODE, 0]


def test_a_trial_locked_by_another_process_is_left_alone(tmp_path, text_file):
  path, layout = _sweep_file(tmp_path, text_file, seeds="[3]"), runner.Layout(tmp_path / "root")
  fd = fileio.try_lock(layout.lock("seed3"))
  assert fd is not None
  try:
    proc = run_cli("treadle.sweep.cli", path, "--root", layout.root)
  finally:
    os.close(fd)
  assert "seed3: locked, skipped" in proc.stdout
  assert not layout.workdir("seed3").exists() and not layout.status("seed3").exists()


@pytest.mark.processes
def test_a_training_outliving_its_killed_sweep_process_keeps_the_lock(tmp_path, text_file):
  path = _sweep_file(tmp_path, text_file, seeds="[5]", **{"train.num_steps": 100_000})
  layout = runner.Layout(tmp_path / "root")
  sweep_proc = _popen(path, "--root", layout.root)
  metrics, deadline = layout.workdir("seed5") / "metrics.jsonl", time.time() + 180
  while not metrics.exists():
    assert sweep_proc.poll() is None and time.time() < deadline, sweep_proc.communicate()
    time.sleep(0.05)
  orphan = runner.read_status(layout, "seed5")["attempts"][-1]["pid"]
  try:
    sweep_proc.kill()  # SIGKILL: the sweep process dies, its training goes on
    sweep_proc.communicate()
    assert runner.pid_alive(orphan)
    other = run_cli("treadle.sweep.cli", path, "--root", layout.root)
    assert "seed5: locked, skipped" in other.stdout
    assert "| seed5 | 5 | running |" in (layout.root / "report.md").read_text()
  finally:
    os.kill(orphan, signal.SIGTERM)  # checkpoints and exits 75
    deadline = time.time() + 120
    while runner.pid_alive(orphan) and time.time() < deadline:
      time.sleep(0.1)
    if runner.pid_alive(orphan):
      os.kill(orphan, signal.SIGKILL)
  report = run_cli("treadle.sweep.cli", path, "--root", layout.root, "--report").stdout
  assert "| seed5 | 5 | interrupted |" in report  # stale 'running' record, nobody alive


@pytest.mark.processes
def test_two_sweep_processes_at_once_train_each_trial_exactly_once(tmp_path, text_file):
  path = _sweep_file(tmp_path, text_file,
                     "[spec.Grid({'optimizer.learning_rate': [1e-3, 2e-3, 3e-3]})]")
  layout = runner.Layout(tmp_path / "root")
  procs = [_popen(path, "--root", layout.root) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  for name in ("lr0.001", "lr0.002", "lr0.003"):
    assert sum(out.count(f"] {name}: started") for out, _ in outs) == 1, outs
    assert len(runner.read_status(layout, name)["attempts"]) == 1
    assert layout.log(name).read_text().count("### attempt") == 1
    # treadle-train's own record: one completed run, one test loss
    assert sum("test_loss" in r for r in runner.read_metrics(layout.workdir(name))) == 1


@pytest.mark.processes
def test_slurm_array_script_runs_each_trial_exactly_once(tmp_path, text_file):
  path = _sweep_file(tmp_path, text_file, "[spec.Grid({'optimizer.learning_rate': [1e-3, 2e-3]})]",
                     seeds="[0, 1]")
  layout = runner.Layout(tmp_path / "root")
  out = run_cli("treadle.sweep.cli", path, "--root", layout.root, "--emit", "slurm",
                "--sbatch=--time=1:00:00").stdout
  script = layout.root / "sweep.sbatch"
  assert out.strip() == str(script)
  text = script.read_text()
  assert "#SBATCH --array=0-3" in text.splitlines() and "#SBATCH --time=1:00:00" in text
  sweep = spec.load(path)
  trials = spec.expand(sweep)
  commands = [shlex.join(runner.command(sweep, t, layout)) for t in trials]
  arms = re.findall(r"^  (\d+)\)  # (\S+)\n    exec (.*) ;;$", text, re.MULTILINE)
  assert arms == [(str(i), t.name, c) for i, (t, c) in enumerate(zip(trials, commands))]
  assert all(text.count(c) == 1 for c in commands)
  assert subprocess.run(["bash", "-n", script]).returncode == 0

  task = subprocess.run(["bash", script], env=child_env(SLURM_ARRAY_TASK_ID="2"), cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
  assert task.returncode == 0, task.stderr
  assert [layout.workdir(t.name).exists() for t in trials] == [False, False, True, False]
  beyond = subprocess.run(["bash", script], env=child_env(SLURM_ARRAY_TASK_ID="4"),
                          capture_output=True, text=True)
  assert beyond.returncode == 2 and "no trial for array task 4" in beyond.stderr
  run_cli("treadle.sweep.cli", path, "--root", layout.root, "--report")
  with open(layout.root / "report.csv") as f:
    statuses = [row["status"] for row in csv.DictReader(f)]
  assert statuses == ["pending", "pending", "finished", "pending"]
