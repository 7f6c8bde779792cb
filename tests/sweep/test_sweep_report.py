"""The sweep report (table contents, status of each trial, plots) and treadle-plot, on
run directories written by hand so that every expected number is known."""
import csv
import json
import socket
import subprocess

import pytest

from treadle.sweep import plots
from treadle.sweep import report
from treadle.sweep import runner
from treadle.sweep import spec
from tests.conftest import REPO, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEP = spec.Sweep(name="r", base_config=str(REPO / "configs" / "tiny.py"),
                   fixed={"train.num_steps": 30},
                   axes=[spec.Grid({"optimizer.learning_rate": [1e-3, 3e-3, 1e-2],
                                    "model.embed_dim": [32, 64]})], seeds=[0])
# steps 5 and 10 logged twice: the run was killed after step 10 and resumed from step 5
FINISHED_ROWS = [
    {"step": 5, "train_loss": 3.0, "tokens_per_second": 100.0},
    {"step": 10, "train_loss": 9.0, "tokens_per_second": 900.0},
    {"step": 5, "train_loss": 3.0, "tokens_per_second": 300.0},
    {"step": 10, "train_loss": 2.8, "tokens_per_second": 200.0},
    {"step": 10, "val_loss": 2.5},
    {"step": 20, "train_loss": 2.4, "tokens_per_second": 250.0},
    {"step": 20, "val_loss": 2.0},
    {"step": 30, "val_loss": 2.2},
    {"step": 30, "test_loss": 2.1, "test_checkpoint_step": 20},
]


def _dead_pid() -> int:
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def _write_trial(layout, trial, rows=None, state=None, attempts=((0.0, 10.0), (100.0, 130.0)),
                 error=None, argv=None):
  if rows is not None:
    layout.workdir(trial.name).mkdir(parents=True)
    (layout.workdir(trial.name) / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
  if state is not None:
    pid = _dead_pid()
    status = {"trial": trial.name, "state": state, "error": error,
              "argv": argv or runner.command(SWEEP, trial, layout),
              "attempts": [{"start": s, "end": e, "host": socket.gethostname(),
                            "pid": pid, "sweep_pid": pid} for s, e in attempts]}
    runner.write_status(layout, trial.name, status)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """Six trials: two finished, failed, killed while running, trained outside the runner
  (not finished), and never started."""
  layout = runner.Layout(tmp_path_factory.mktemp("sweep") / "root")
  t = {trial.name: trial for trial in spec.expand(SWEEP)}
  _write_trial(layout, t["lr0.001_embed_dim32_seed0"], FINISHED_ROWS, "finished")
  _write_trial(layout, t["lr0.001_embed_dim64_seed0"],
               [{**r, **({"val_loss": r["val_loss"] - 0.5} if "val_loss" in r else {})}
                for r in FINISHED_ROWS], "finished", attempts=((0.0, 50.0),))
  _write_trial(layout, t["lr0.003_embed_dim32_seed0"], None, "failed", attempts=((5.0, 6.0),),
               error="exit 2: error: model.embed_dim=32 is not divisible")
  _write_trial(layout, t["lr0.003_embed_dim64_seed0"], FINISHED_ROWS[:2], "running",
               attempts=((0.0, None),))
  _write_trial(layout, t["lr0.01_embed_dim32_seed0"], FINISHED_ROWS[:5])
  paths = report.write(SWEEP, list(t.values()), layout, "experiments/r/sweep.py")
  return layout, {r["trial"]: r for r in report.rows(SWEEP, list(t.values()), layout)}, paths


def test_rows_hold_the_numbers_of_each_run(swept):
  _, rows, _ = swept
  assert rows["lr0.001_embed_dim32_seed0"] == {
      "trial": "lr0.001_embed_dim32_seed0", "optimizer.learning_rate": 1e-3,
      "model.embed_dim": 32, "train.seed": 0, "status": "finished", "steps": 30,
      "final_val_loss": 2.2, "best_val_loss": 2.0, "test_loss": 2.1, "wall_time_s": 40.0,
      "tokens_per_second": 250.0, "error": ""}  # median of 100, 900, 300, 200, 250
  assert [rows[n]["status"] for n in sorted(rows)] == [
      "finished", "finished", "failed", "interrupted", "incomplete", "pending"]
  assert rows["lr0.003_embed_dim32_seed0"]["error"].endswith("is not divisible")
  assert rows["lr0.01_embed_dim64_seed0"]["steps"] is None


def test_markdown_table_marks_the_best_and_lists_errors(swept):
  layout, _, paths = swept
  md = (layout.root / "report.md").read_text()
  assert paths[0] == layout.root / "report.md"
  lines = md.splitlines()
  assert lines[0] == "# Sweep `r`"
  assert "6 trials: 1 failed, 2 finished, 1 incomplete, 1 interrupted, 1 pending." in md
  assert "Best by best_val_loss: **lr0.001_embed_dim64_seed0** (1.5000)." in md
  assert ("| trial | optimizer.learning_rate | model.embed_dim | train.seed | status | steps | "
          "final val | best val | test | wall time (s) | tokens/s |") in lines
  assert "| lr0.001_embed_dim32_seed0 | 0.001 | 32 | 0 | finished | 30 | 2.2000 | 2.0000 | " \
         "2.1000 | 40 | 250 |" in lines
  assert "| **lr0.001_embed_dim64_seed0** | 0.001 | 64 | 0 | finished | 30 | 1.7000 | " \
         "1.5000 | 2.1000 | 50 | 250 |" in lines
  assert ("- `lr0.003_embed_dim32_seed0`: exit 2: error: model.embed_dim=32 is not divisible"
          in lines)


def test_csv_has_every_trial_with_full_precision(swept):
  layout, rows, _ = swept
  with open(layout.root / "report.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["trial"] for r in table] == list(rows)
  first = table[0]
  assert float(first["best_val_loss"]) == 2.0 and float(first["test_loss"]) == 2.1
  assert first["optimizer.learning_rate"] == "0.001" and first["status"] == "finished"
  assert table[-1]["status"] == "pending" and table[-1]["test_loss"] == ""


def test_plots_are_pngs_one_per_swept_key_but_the_seed(swept):
  layout, _, paths = swept
  names = sorted(p.name for p in paths if p.suffix == ".png")
  assert names == ["curves.png", "metric_vs_model.embed_dim.png",
                   "metric_vs_optimizer.learning_rate.png"]
  for name in names:
    data = (layout.root / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_a_changed_command_is_not_finished(tmp_path):
  layout = runner.Layout(tmp_path)
  trial = spec.expand(SWEEP)[0]
  old = runner.command(SWEEP, trial, layout)[:-1] + ["--config.train.seed=9"]
  _write_trial(layout, trial, FINISHED_ROWS, "finished", argv=old)
  assert report.rows(SWEEP, [trial], layout)[0]["status"] == "outdated"
  assert not runner.is_finished(FINISHED_ROWS, runner.read_status(layout, trial.name),
                                runner.command(SWEEP, trial, layout))


def test_curves_keep_the_last_value_of_a_repeated_step():
  train, val = plots.curves(FINISHED_ROWS + [{"step": 40, "train_loss": "nan", "nonfinite": True}])
  assert train == [(5, 3.0), (10, 2.8), (20, 2.4)]
  assert val == [(10, 2.5), (20, 2.0), (30, 2.2)]


def test_treadle_plot_writes_a_png_or_fails_in_one_line(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                          for r in FINISHED_ROWS))
  proc = run_cli("treadle.sweep.plots", "--workdir", tmp_path / "run")
  assert proc.stdout.strip() == str(tmp_path / "run" / "loss_curves.png")
  assert (tmp_path / "run" / "loss_curves.png").read_bytes().startswith(PNG_MAGIC)
  run_cli("treadle.sweep.plots", "--workdir", tmp_path / "run", "--out", tmp_path / "x" / "a.png")
  assert (tmp_path / "x" / "a.png").read_bytes().startswith(PNG_MAGIC)
  bad = run_cli("treadle.sweep.plots", "--workdir", tmp_path / "empty", check=False)
  assert bad.returncode == 2 and bad.stderr.startswith("error:") and "no losses" in bad.stderr


def test_treadle_plot_skips_a_line_that_is_not_a_row_with_a_warning_naming_it(tmp_path):
  # was "error: Expecting value: line 1 column 1 (char 0)", exit 2 and no plot
  (tmp_path / "run").mkdir()
  lines = [json.dumps(r) for r in FINISHED_ROWS]
  lines[3:3] = ["\x00\x00garbage", '["not", "a", "row"]']  # lines 4 and 5 of the file
  path = tmp_path / "run" / "metrics.jsonl"
  path.write_text("\n".join(lines) + "\n")
  proc = run_cli("treadle.sweep.plots", "--workdir", tmp_path / "run")
  assert (tmp_path / "run" / "loss_curves.png").read_bytes().startswith(PNG_MAGIC)
  warnings = proc.stderr.strip().splitlines()
  assert len(warnings) == 2, proc.stderr
  assert f"{path} line 4: not JSON" in warnings[0] and "skipped" in warnings[0]
  assert f"{path} line 5: not an object with an integer step" in warnings[1]
  # the rest is read as if those lines were not there
  assert runner.read_metrics(tmp_path / "run") == runner.read_metrics(_clean(tmp_path))


def _clean(tmp_path):
  (tmp_path / "clean").mkdir()
  (tmp_path / "clean" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                            for r in FINISHED_ROWS))
  return tmp_path / "clean"


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "Unknown command line flag 'bogus'"),
    ([], "--workdir is required"),
    (["--workdir", "x", "extra"], "unexpected argument 'extra'"),
])
def test_treadle_plot_bad_flags_are_one_line_exit_2(tmp_path, args, message):
  proc = run_cli("treadle.sweep.plots", *args, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_eval_task_scores_are_columns_of_their_last_evaluation(tmp_path):
  """eval.tasks metrics (eval/NAME/acc): the value of each trial's last evaluation, after
  the fixed columns, in the Markdown and the CSV; a trial without them leaves them empty."""
  layout = runner.Layout(tmp_path / "root")
  t = spec.expand(SWEEP)
  scored = [*FINISHED_ROWS[:5], {"step": 10, "eval/mc/acc": 0.25, "eval/mc/acc_norm": 0.5},
            *FINISHED_ROWS[5:7], {"step": 20, "eval/mc/acc": 0.75, "eval/mc/acc_norm": 0.625},
            *FINISHED_ROWS[7:]]
  _write_trial(layout, t[0], scored, "finished")
  _write_trial(layout, t[1], FINISHED_ROWS, "finished")
  report.write(SWEEP, t[:2], layout, "experiments/r/sweep.py")
  rows = report.rows(SWEEP, t[:2], layout)
  assert rows[0]["eval/mc/acc"] == 0.75 and rows[0]["eval/mc/acc_norm"] == 0.625
  assert "eval/mc/acc" not in rows[1] and "eval/mc/acc" not in report._swept_keys(rows)
  lines = (layout.root / "report.md").read_text().splitlines()
  assert any(line.endswith("| tokens/s | eval/mc/acc | eval/mc/acc_norm |") for line in lines)
  assert any(line.startswith(f"| **{t[0].name}** |") and line.endswith("| 0.7500 | 0.6250 |")
             for line in lines)  # (the best trial, in bold)
  with open(layout.root / "report.csv") as f:
    table = list(csv.DictReader(f))
  assert table[0]["eval/mc/acc"] == "0.75" and table[1]["eval/mc/acc"] == ""
