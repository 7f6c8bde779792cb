"""Run-directory pieces without a trainer: the workdir lock, metrics rows each step once, the
resume allow-list and the float checks."""
import json
import os
import subprocess
import sys

import pytest

from treadle.train import config as config_lib
from treadle.train import metrics
from treadle.train import workdir as workdir_lib
from treadle.configs import tiny


def test_second_claim_names_the_owner_pid_and_the_lock_dies_with_its_process(tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", (
      "import pathlib, sys, time\n"
      "from treadle.train import workdir as w\n"
      f"with w.claim(pathlib.Path({str(workdir)!r})):\n"
      f"  pathlib.Path({str(workdir / 'ready')!r}).touch(); time.sleep(60)\n")])
  try:
    for _ in range(3000):
      if (workdir / "ready").exists():
        break
      assert holder.poll() is None
      subprocess.run(["sleep", "0.01"])
    with pytest.raises(workdir_lib.WorkdirError,
                       match=f"^workdir {workdir} is in use by pid {holder.pid}$"):
      with workdir_lib.claim(workdir):
        pass
  finally:
    holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
    holder.wait()
  with workdir_lib.claim(workdir):
    assert (workdir / workdir_lib.LOCK_FILENAME).read_text() == f"{os.getpid()}\n"


def test_a_failed_start_removes_the_workdir_it_created_and_nothing_else(tmp_path):
  fresh = tmp_path / "a" / "b" / "run"
  with pytest.raises(ValueError, match="bad data"):
    with workdir_lib.claim(fresh):
      raise ValueError("bad data")
  assert not (tmp_path / "a").exists()
  existing = tmp_path / "old"
  existing.mkdir()
  (existing / "config.json").write_text("{}")
  with pytest.raises(ValueError):
    with workdir_lib.claim(existing):
      raise ValueError("bad data")
  assert (existing / "config.json").read_text() == "{}"


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "file").write_text("x")
  for workdir in (tmp_path / "file", tmp_path / "file" / "run"):
    with pytest.raises(workdir_lib.WorkdirError, match="is not a directory"):
      with workdir_lib.claim(workdir):
        pass
  assert (tmp_path / "file").read_text() == "x"


def _row(step, **values):
  return {"step": step, **values}


def test_each_step_once_keeps_the_resumed_rows():
  first = [_row(5, train_loss=3.0), _row(10, train_loss=2.5), _row(10, val_loss=2.6),
           _row(15, train_loss=2.2), _row(15, val_loss=2.3)]   # killed before checkpoint 15
  resumed = [_row(15, train_loss=2.2), _row(15, val_loss=2.3), _row(20, train_loss=2.0),
             _row(20, test_loss=2.1)]                           # resumed from step 10
  assert metrics.each_step_once(first + resumed) == first[:3] + resumed
  backwards = first + [_row(11, train_loss=2.4)]                # log_every=1 after the resume
  assert metrics.each_step_once(backwards) == first[:3] + [_row(11, train_loss=2.4)]
  # a non-finite step writes two rows of one step with different keys: both stay
  skipped = [_row(3, nonfinite=True, train_loss="nan"), _row(3, train_loss=1.0, grad_norm=2.0)]
  assert metrics.each_step_once(skipped) == skipped


def test_drop_after_rewrites_atomically_without_the_replayed_rows(tmp_path):
  rows = [_row(10, train_loss=2.5), _row(10, val_loss=2.6), _row(20, train_loss=2.0),
          _row(20, test_loss=2.1)]
  text = "".join(json.dumps(r) + "\n" for r in rows)
  (tmp_path / metrics.FILENAME).write_text(text + '{"step": 21, "train_lo')  # torn by SIGKILL
  assert metrics.drop_after(tmp_path, 10) == 2
  assert metrics.read(tmp_path) == rows[:2]
  assert (tmp_path / metrics.FILENAME).read_text().endswith("\n")
  (tmp_path / metrics.FILENAME).write_text(text)
  assert metrics.drop_after(tmp_path, 20) == 1  # the test row is written again at the end
  assert metrics.read(tmp_path) == rows[:3]
  assert [p.name for p in tmp_path.iterdir()] == [metrics.FILENAME]  # no temporary file left


def test_a_line_that_is_not_a_row_is_skipped_with_a_warning_and_dropped_on_resume(tmp_path,
                                                                                 caplog):
  rows = [_row(10, train_loss=2.5), _row(10, val_loss=2.6), _row(20, train_loss=2.0)]
  path = tmp_path / metrics.FILENAME
  # a middle line torn by a kill before resume dropped torn lines, with the next row after it
  path.write_text(f"{json.dumps(rows[0])}\n{{\"step\": 15, \"tr{json.dumps(rows[1])}\n"
                  f"{json.dumps(rows[2])}\n")
  assert metrics.read(tmp_path) == [rows[0], rows[2]]
  (warning,) = [r.getMessage() for r in caplog.records]
  assert warning.startswith(f"{path} line 2: not JSON (Expecting ") and warning.endswith(
      "); skipped"), warning
  assert metrics.drop_after(tmp_path, 20) == 0  # nothing past step 20: the file is left as is
  assert metrics.drop_after(tmp_path, 10) == 1  # the resumed run writes step 20 again
  assert path.read_text() == json.dumps(rows[0]) + "\n"  # the unreadable line went with it


def _split(**overrides):
  cfg = tiny.get_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    cfg[section][name] = value
  return config_lib.split(cfg)


def test_resume_allows_only_the_listed_keys():
  base = _split()
  refused, allowed = config_lib.differences(base, _split(**{
      "train.num_steps": 50, "train.eval_every": 5, "train.keep_checkpoints": 3,
      "train.early_stopping_patience": 2, "mesh.data": 2}))
  assert refused == [] and allowed == ["mesh.data", "train.early_stopping_patience",
                                       "train.eval_every", "train.keep_checkpoints",
                                       "train.num_steps"]
  refused, _ = config_lib.differences(base, _split(**{
      "train.seed": 1, "train.batch_size": 16, "train.grad_accum_steps": 2,
      "train.eval_batches": 3, "data.path": "x.txt", "optimizer.learning_rate": 0.1,
      "finetune.lora_alpha": 8.0}))
  assert refused == ["data.path", "finetune.lora_alpha", "optimizer.learning_rate",
                     "train.batch_size", "train.eval_batches", "train.grad_accum_steps",
                     "train.seed"]


@pytest.mark.parametrize("key,value,match", [
    ("optimizer.learning_rate", float("nan"), "optimizer.learning_rate=nan must be a finite"),
    ("optimizer.learning_rate", float("inf"), "optimizer.learning_rate=inf must be a finite"),
    ("optimizer.learning_rate", -1e-3, "optimizer.learning_rate=-0.001"),
    ("optimizer.beta2", 1.0, "optimizer.beta2=1.0 must be in"),
    ("model.dropout", float("nan"), "model.dropout=nan"),
    ("train.early_stopping_min_delta", -0.1, "must be >= 0"),
])
def test_floats_must_be_finite_and_in_range(key, value, match):
  with pytest.raises(ValueError, match=match.replace("(", r"\(")):
    _split(**{key: value})


def test_sweep_report_and_plot_read_a_legacy_file_with_each_step_once(tmp_path):
  from treadle.sweep import plots
  from treadle.sweep import runner
  # written by a version that kept the rows a SIGKILLed process logged past checkpoint 10
  killed = [_row(s, train_loss=5.0 - s / 10, tokens_per_second=100.0) for s in (5, 10, 15)]
  killed.append(_row(15, val_loss=3.5))
  resumed = [_row(15, train_loss=3.5, tokens_per_second=200.0), _row(15, val_loss=3.5),
             _row(20, train_loss=3.0, tokens_per_second=200.0)]
  (tmp_path / metrics.FILENAME).write_text(
      "".join(json.dumps(r) + "\n" for r in killed + resumed))
  read = runner.read_metrics(tmp_path)
  assert read == killed[:2] + resumed
  train, val = plots.curves(read)
  assert [s for s, _ in train] == [5, 10, 15, 20] and val == [(15, 3.5)]
