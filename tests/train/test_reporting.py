"""What an operator sees: plain progress lines off a terminal, a profiler trace, W&B offline."""
import json
import re

import pytest

from tests.conftest import metric_rows, run_cli
from treadle.train import config as config_lib
from treadle.train import metrics

TINY = ["--config", "configs/tiny.py", "--config.train.log_every=5",
        "--config.train.eval_every=10", "--config.train.num_steps=20"]


def test_without_a_terminal_a_run_prints_a_line_per_log_step_and_eval(tmp_path, text_file):
  """run_cli's stderr is a pipe, as under SLURM or nohup."""
  proc = run_cli("treadle.train.main", *TINY, "--workdir", tmp_path / "run",
                 f"--config.data.path={text_file}", "--config.train.profile_steps=12:15")
  lines = proc.stderr.splitlines()
  train = [l for l in lines if re.search(r"step \d+/20  loss ", l)]
  assert [int(re.search(r"step (\d+)/", l).group(1)) for l in train] == [5, 10, 15, 20]
  assert all(re.search(r"loss \d+\.\d{4}  lr \S+  tokens/s [\d,]+  ETA \d+m\d\ds$", l)
             for l in train), train
  evals = [l for l in lines if "val loss" in l and "best val loss" in l]
  assert [int(re.search(r"step (\d+)/", l).group(1)) for l in evals] == [10, 20]
  rows = metric_rows(tmp_path / "run")
  loss_at_10 = next(r["train_loss"] for r in rows if r["step"] == 10 and "train_loss" in r)
  assert f"step 10/20  loss {loss_at_10:.4f}" in "\n".join(train)
  profile = tmp_path / "run" / "profile"
  for pattern in ("*.xplane.pb", "*.trace.json.gz"):  # TensorBoard, Perfetto
    traces = list(profile.rglob(pattern))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000, pattern


@pytest.mark.parametrize("value", ["20", "5:5", "0:3", "a:b", "3:"])
def test_bad_profile_steps_is_a_clear_error(value):
  with pytest.raises(ValueError, match=r"train\.profile_steps=.*START:STOP"):
    config_lib.section("train", profile_steps=value)


def test_profile_steps_window():
  assert config_lib.section("train", profile_steps="20:25").profile_window == (20, 25)
  assert config_lib.section("train", profile_steps="").profile_window is None


def test_wandb_gets_the_same_scalars_and_the_resolved_config_offline(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = {"model": {"num_layers": 2}, "train": {"seed": 3}}
  writer = metrics.MetricsWriter(tmp_path, True, "treadle-test", config)
  writer.write(1, train_loss=2.5, learning_rate=1e-3)
  writer.write(2, train_loss=2.0, learning_rate=2e-3, nonfinite=False)
  writer.write(2, val_loss=2.25)
  writer.write(3, train_loss=1.75, learning_rate=3e-3)  # W&B commits step 2 when 3 begins
  run = writer._wandb
  assert run.settings.mode == "offline" and run.project == "treadle-test"
  assert dict(run.config)["model"] == {"num_layers": 2} and dict(run.config)["train"]["seed"] == 3
  summary = {k: run.summary[k] for k in ("train_loss", "learning_rate", "val_loss", "_step")}
  assert summary == {"train_loss": 2.0, "learning_rate": 2e-3, "val_loss": 2.25, "_step": 2}
  writer.close()
  assert (tmp_path / metrics.WANDB_ID_FILE).read_text() == run.id
  assert list((tmp_path / "wandb").glob(f"offline-run-*-{run.id}"))
  rows = metrics.read(tmp_path)
  assert rows[1] == {"step": 2, "train_loss": 2.0, "learning_rate": 2e-3, "nonfinite": False}
