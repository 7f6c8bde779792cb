"""treadle installs as treadle.* only: a user's own `model.py` and `data/` beside their
notebook neither shadow treadle nor are shadowed by it."""
import json
import pathlib
import subprocess
import sys
from importlib import metadata

import pytest

from tests.conftest import REPO

BIN = pathlib.Path(sys.executable).parent


@pytest.fixture
def user_dir(tmp_path) -> pathlib.Path:
  """A researcher's directory outside the repository with generic module names of its own."""
  home = tmp_path / "project"
  (home / "data").mkdir(parents=True)
  (home / "model.py").write_text("OWNER = 'user model'\n")
  (home / "data" / "__init__.py").write_text("OWNER = 'user data'\n")
  (home / "train.py").write_text("raise SystemExit('the user train.py was imported')\n")
  return home


def _python(code: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd)}
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_generic_names_stay_the_users(user_dir):
  proc = _python("import model, data\n"
                 "from treadle.infer.sampler import Sampler\n"
                 "from treadle.data import text\n"
                 "import treadle.model.gpt\n"
                 "print(model.OWNER, '|', data.OWNER, '|', Sampler.__module__)", user_dir)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "user model | user data | treadle.infer.sampler"


@pytest.mark.parametrize("name", ["common", "model", "train", "data", "configs", "infer", "sweep", "hf", "serve"])
def test_treadle_claims_no_generic_top_level_name(tmp_path, name):
  proc = _python(f"import {name}", tmp_path)
  assert proc.returncode == 1 and f"No module named '{name}'" in proc.stderr


def test_console_scripts_point_into_the_treadle_namespace():
  scripts = [e for e in metadata.distribution("treadle").entry_points if e.group ==
             "console_scripts"]
  assert {"treadle-train", "treadle-sample", "treadle-predict", "treadle-sweep",
          "treadle-plot"} <= {e.name for e in scripts}
  for entry in scripts:
    assert entry.value.startswith("treadle."), entry
    # each in its own process: the CLIs define absl flags of the same names
    load = _python("from importlib import metadata\n"
                   f"(e,) = metadata.entry_points(group='console_scripts', name={entry.name!r})\n"
                   "assert callable(e.load())", REPO.parent)
    assert load.returncode == 0, load.stderr


@pytest.mark.slow
def test_train_and_sample_from_a_user_directory(user_dir, text_file):
  env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(user_dir),
         "TREADLE_CACHE": str(user_dir / "cache")}
  train = subprocess.run(
      [BIN / "treadle-train", "--config", REPO / "configs" / "tiny.py", "--workdir", "runs/t",
       f"--config.data.path={text_file}", "--config.train.num_steps=4",
       "--config.train.eval_every=4", "--config.train.checkpoint_every=4"],
      cwd=user_dir, env=env, capture_output=True, text=True, timeout=300)
  assert train.returncode == 0, train.stderr[-3000:]
  sample = subprocess.run(
      [BIN / "treadle-sample", "--workdir", "runs/t", "--prompt", "ROMEO:", "--max_new_tokens",
       "5", "--json"], cwd=user_dir, env=env, capture_output=True, text=True, timeout=300)
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert json.loads(sample.stdout.strip().splitlines()[-1])
  # the user's own modules were never imported in place of treadle's
  assert "the user train.py was imported" not in train.stderr + sample.stderr
