"""treadle-train and treadle-sample on run directories that are busy, changed or damaged, and
on bad input: one line, exit 2 (75 for a signal), nothing already saved harmed."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, child_env, metric_rows, run_cli

TINY = "configs/tiny.py"


def _train(workdir, data, *overrides, check=False, **kw):
  return run_cli("treadle.train.main", "--config", TINY, "--workdir", workdir,
                 f"--config.data.path={data}", *overrides, check=check, **kw)


def _error(proc) -> str:
  """The one `error:` line (asserting there is exactly one) of an exit-2 command."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory, text_file):
  """This module's own copy of the corpus: one test changes it (and puts it back)."""
  path = tmp_path_factory.mktemp("data") / "input.txt"
  shutil.copy(text_file, path)
  return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
  workdir = tmp_path_factory.mktemp("run") / "run"
  _train(workdir, data, check=True)  # 20 steps, checkpoints 10 and 20
  return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


@pytest.mark.parametrize("overrides,keys", [
    (["--config.train.seed=1"], "train.seed"),
    (["--config.train.batch_size=16", "--config.train.grad_accum_steps=2"],
     "train.batch_size, train.grad_accum_steps"),
    (["--config.optimizer.learning_rate=0.01", "--config.train.num_steps=30"],
     "optimizer.learning_rate (use"),
])
def test_resume_refuses_a_change_outside_the_allow_list(run_copy, data, overrides, keys):
  before = (run_copy / "config.json").read_bytes()
  stamp = (run_copy / "config.json").stat().st_mtime_ns
  line = _error(_train(run_copy, data, *overrides))
  assert "holds another experiment" in line and keys in line
  assert (run_copy / "config.json").read_bytes() == before
  assert (run_copy / "config.json").stat().st_mtime_ns == stamp


def test_resume_refuses_data_whose_content_changed_at_the_same_path(run_copy, data):
  original = data.read_text()
  try:
    data.write_text(original[:-20_000])
    line = _error(_train(run_copy, data, "--config.train.num_steps=30"))
  finally:
    data.write_text(original)
  assert "the data" in line and str(data) in line and "differ" in line
  assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["10", "20"]


def _swap_two_characters(workdir):
  path = workdir / "tokenizer.json"
  spec = json.loads(path.read_text())
  chars = spec["chars"]
  spec["chars"] = chars[1] + chars[0] + chars[2:]  # still a valid tokenizer of the same size
  path.write_text(json.dumps(spec))


def test_an_altered_tokenizer_is_refused_by_resume_sampling_and_init_from(run_copy, data,
                                                                          tmp_path):
  _swap_two_characters(run_copy)
  line = _error(_train(run_copy, data, "--config.train.num_steps=30"))
  assert "tokenizer.json' was changed" in line
  line = _error(run_cli("treadle.infer.cli", "--workdir", run_copy, "--max_new_tokens", "4",
                        check=False))
  assert "tokenizer.json' was changed" in line
  line = _error(_train(tmp_path / "tuned", data, f"--config.train.init_from={run_copy}"))
  assert "train.init_from" in line and "tokenizer.json' was changed" in line
  assert not (tmp_path / "tuned").exists()


def test_sampler_checks_the_tokenizer_size_against_the_model(run_copy):
  spec = json.loads((run_copy / "tokenizer.json").read_text())
  spec["chars"] = spec["chars"][:-1]
  (run_copy / "tokenizer.json").write_text(json.dumps(spec))
  (run_copy / "fingerprints.json").unlink()  # as a run directory from before fingerprints
  line = _error(run_cli("treadle.infer.cli", "--workdir", run_copy, "--max_new_tokens", "4",
                        check=False))
  vocab = json.loads((run_copy / "config.json").read_text())["model"]["vocab_size"]
  assert f"has {vocab - 1} tokens but the model was trained with model.vocab_size={vocab}" in line


def test_a_corrupt_config_json_or_tokenizer_json_is_named(run_copy, data):
  saved = {name: (run_copy / name).read_bytes() for name in ("config.json", "tokenizer.json")}
  (run_copy / "config.json").write_text('{"task": "lm", "model": ')
  assert str(run_copy / "config.json") in _error(_train(run_copy, data))
  (run_copy / "config.json").write_bytes(saved["config.json"])
  (run_copy / "tokenizer.json").write_text('{"kind": "char", "chars": ')
  (run_copy / "fingerprints.json").unlink()  # as a run directory from before fingerprints
  line = _error(run_cli("treadle.infer.cli", "--workdir", run_copy, check=False))
  assert f"{str(run_copy / 'tokenizer.json')!r} is not a valid tokenizer file" in line


def test_sampler_refuses_a_non_finite_temperature(trained):
  line = _error(run_cli("treadle.infer.cli", "--workdir", trained, "--temperature", "nan",
                        check=False))
  assert "temperature=nan must be a finite number" in line
  from treadle.infer import sampler as sampler_lib
  with pytest.raises(ValueError, match="temperature=inf must be a finite number"):
    sampler_lib.check_sampling_args(float("inf"), 0, 1.0, 10)


def _damage(how, step_dir):
  if how == "truncated state shard":
    for shard in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
      shard.write_bytes(shard.read_bytes()[:10])
  elif how == "missing iterator state":
    shutil.rmtree(step_dir / "data_iter")
  elif how == "missing state metadata":
    (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize("how", ["truncated state shard", "missing iterator state",
                                 "missing state metadata"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_step(run_copy, trained, data,
                                                                     how):
  _damage(how, run_copy / "checkpoints" / "20")
  proc = _train(run_copy, data, "--config.train.num_steps=20", check=True)
  warnings = [line for line in proc.stderr.splitlines() if "is damaged" in line]
  assert len(warnings) == 1 and "checkpoint step 20" in warnings[0], proc.stderr[-3000:]
  assert "restoring step 10" in warnings[0] and "resumed from step 10" in proc.stderr
  assert (run_copy / "damaged_checkpoints" / "20").is_dir()  # kept for inspection
  # steps 11..20 trained again from step 10: the same losses as the first time, logged once
  rows = metric_rows(run_copy)
  first = metric_rows(trained)
  assert [r["step"] for r in rows if "train_loss" in r] == [5, 10, 15, 20]
  assert ([r["train_loss"] for r in rows if "train_loss" in r]
          == [r["train_loss"] for r in first if "train_loss" in r])


@pytest.mark.processes
def test_two_trainers_on_one_workdir(tmp_path, data):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "treadle.train.main", "--config", TINY, "--workdir", str(workdir),
         f"--config.data.path={data}", "--config.train.num_steps=100000"]
  env = child_env()
  first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline, lock = time.time() + 240, workdir / "lock"
    while not (lock.exists() and lock.read_text() == f"{first.pid}\n"):  # the owner's lock
      assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
      time.sleep(0.05)
    second = _train(workdir, data, "--config.train.num_steps=100000")
    assert _error(second) == f"error: workdir {workdir} is in use by pid {first.pid}"
  finally:
    first.kill()
    first.wait()


def _proc_status(pid: int) -> dict[str, str]:
  lines = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
  return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@pytest.mark.processes
def test_sigterm_during_start_up_exits_75(tmp_path, data):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "treadle.train.main", "--config", TINY, "--workdir", str(workdir),
         f"--config.data.path={data}"]
  env = child_env()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  # as soon as the handler is installed (SigCgt bit 15 in /proc), while jax is still importing
  deadline = time.time() + 60
  while not int(_proc_status(proc.pid).get("SigCgt", "0"), 16) & (1 << (signal.SIGTERM - 1)):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err[-2000:]
  assert "SIGTERM during start-up or the final evaluation: nothing to save" in err
  assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
  assert not (workdir / "checkpoints").exists()


# What happens when the start-up signal's SystemExit is swallowed (seen: raised inside a weakref
# callback of importlib's module locks, Python prints "Exception ignored" and the import goes on):
# the signal is remembered, the loop trains nothing, the command still exits 75.
_SWALLOWED = """
import runpy, sys
from treadle.train import interrupts
interrupts._outside_training = "SIGTERM"  # as exit_outside_training leaves it
sys.argv = ["treadle-train", *sys.argv[1:]]
runpy.run_module("treadle.train.main", run_name="__main__")
"""


@pytest.mark.processes
def test_a_start_up_signal_whose_exit_was_swallowed_still_stops_before_training(tmp_path, data):
  workdir = tmp_path / "run"
  env = child_env()
  proc = subprocess.run([sys.executable, "-c", _SWALLOWED, "--config", TINY, "--workdir",
                         str(workdir), f"--config.data.path={data}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 75, proc.stderr[-2000:]
  assert json.loads((workdir / "summary.json").read_text())["outcome"] == "interrupted"
  assert "step 1/" not in proc.stderr and not list((workdir / "checkpoints").iterdir())
  rerun = _train(workdir, data)  # "rerun to resume": from the start, nothing was saved
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert json.loads((workdir / "summary.json").read_text())["outcome"] == "completed"


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    ("def get_config(:\n  pass\n", "syntax error at line 1"),
    ("import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict()\n",
     "lacks the section(s) mesh, train"),
])
def test_a_bad_config_file_is_one_line(tmp_path, content, match):
  config = tmp_path / "config.py"
  if content is not None:
    config.write_text(content)
  proc = run_cli("treadle.train.main", "--config", config, "--workdir", tmp_path / "run",
                 check=False)
  line = _error(proc)
  assert str(config) in line and match in line
  assert not (tmp_path / "run").exists()


def test_a_non_finite_learning_rate_writes_nothing(tmp_path, data):
  # the other floats and ranges: tests/train/test_run_files.py
  line = _error(_train(tmp_path / "run", data, "--config.optimizer.learning_rate=nan"))
  assert "optimizer.learning_rate=nan must be a finite number" in line
  assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file(tmp_path, data):
  (tmp_path / "run").write_text("notes")
  line = _error(_train(tmp_path / "run", data))
  assert "is not a directory" in line
  assert (tmp_path / "run").read_text() == "notes"


def _in_mount_namespace(mount: str, command: list[str]) -> subprocess.CompletedProcess:
  """Runs `mount` (a shell line) then `command` in a private mount namespace, as root or as
  an unprivileged user mapped to root (unshare -r); the host's mounts are untouched."""
  if shutil.which("unshare") is None:
    pytest.skip("needs util-linux unshare for a private mount namespace")
  flags = "-m" if os.geteuid() == 0 else "-rm"
  script = f"{mount} && exec \"$@\""
  env = child_env()
  return subprocess.run(["unshare", flags, "sh", "-c", script, "sh", *command], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["mount", "simulated"])
def test_a_read_only_workdir(run_copy, data, how):
  """`mount`: a read-only bind mount in a private mount namespace, where one is permitted;
  `simulated` (runs everywhere, CI included): read_only_launcher.py answers the process's
  writes under the workdir with EROFS, as that mount would."""
  before = {p: p.read_bytes() for p in run_copy.glob("*.json")}
  args = ["--config", TINY, "--workdir", str(run_copy), f"--config.data.path={data}",
          "--config.train.num_steps=30"]
  if how == "simulated":
    proc = subprocess.run([sys.executable, "tests/train/read_only_launcher.py", *args],
                          cwd=REPO, env=child_env(TREADLE_TEST_READ_ONLY=str(run_copy)),
                          capture_output=True, text=True, timeout=300)
  else:
    proc = _in_mount_namespace(
        f"mount --bind {run_copy} {run_copy} && mount -o remount,bind,ro {run_copy}",
        [sys.executable, "-m", "treadle.train.main", *args])
    if proc.returncode != 2 and "Operation not permitted" in proc.stderr:
      pytest.skip("mount namespaces are not permitted here (the simulated case still runs)")
  line = _error(proc)
  assert str(run_copy) in line and "Read-only file system" in line
  assert {p: p.read_bytes() for p in run_copy.glob("*.json")} == before


def test_a_full_disk_is_one_line_and_keeps_the_written_checkpoint(tmp_path, data):
  disk, kept = tmp_path / "disk", tmp_path / "kept"
  disk.mkdir()
  workdir = disk / "run"
  # 700 KiB: the run files and checkpoint 10 fit (about 470 KiB a step), checkpoint 20 not.
  # No fallback where mount namespaces are refused: the disk fills inside TensorStore's C++
  # writes, which no in-process patch reaches; RLIMIT_FSIZE limits each file (EFBIG, after a
  # SIGXFSZ), not the space left; a size-limited filesystem (tmpfs, loop, FUSE) needs a mount.
  proc = _in_mount_namespace(
      f"mount -t tmpfs -o size=700k none {disk}",
      ["sh", "-c", f'"$@"; code=$?; cp -r {workdir} {kept}; exit $code', "sh",
       sys.executable, "-m", "treadle.train.main", "--config", TINY, "--workdir", str(workdir),
       f"--config.data.path={data}"])
  if proc.returncode != 2 and "Operation not permitted" in proc.stderr:
    pytest.skip("mount namespaces are not permitted here")
  assert "No space left on device" in _error(proc)
  # only that line: no traceback of Orbax's writer threads, asyncio or tensorboardX around it
  assert proc.stderr.splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr
  assert "Exception" not in proc.stderr and "RESOURCE_EXHAUSTED" not in proc.stderr
  assert (kept / "checkpoints" / "10" / "commit_success.txt").exists()
  assert not (kept / "checkpoints" / "20").exists()
  from treadle.infer import sampler as sampler_lib
  assert sampler_lib.Sampler.from_workdir(kept).step == 10  # the written step still loads


@pytest.mark.parametrize("override,key", [
    ("--config.model.embed_dim=0", "model.embed_dim"),
    ("--config.model.num_layers=0", "model.num_layers"),
    ("--config.model.max_seq_len=-1", "model.max_seq_len"),
])
def test_a_model_size_out_of_range_names_the_key_and_writes_nothing(tmp_path, data, override,
                                                                     key):
  # embed_dim=0 used to write a checkpoint directory, then fail saving a zero-size array
  line = _error(_train(tmp_path / "run", data, override))
  assert f"{key}=" in line and "must be" in line
  assert not (tmp_path / "run").exists()
