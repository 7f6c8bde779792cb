"""Image classification through the same trainer: sharding, resume, prediction, bad input."""
import json

import jax
import numpy as np
import pytest

from treadle.configs import digits_cnn
from treadle.configs import tiny
from treadle.data import images
from treadle.infer import predictor
from tests import numerics
from tests.conftest import metric_rows, run_cli
from treadle.train import config as config_lib
from treadle.train import loop
from treadle.train import mesh as mesh_lib
from treadle.train import optimizer
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train.tasks import image as image_task

OPT = config_lib.section("optimizer", warmup_steps=1)


@pytest.fixture(scope="module")
def digits():
  return images.load(config_lib.section("data", "classify"))


def _steps(model_cfg, shape, devices, digits, n=3):
  mesh = mesh_lib.make_mesh(shape, devices)
  tx = optimizer.build(OPT, 10)
  shardings = state_lib.shardings(model_cfg, tx, mesh, mesh_lib.rules("dp"))
  state = state_lib.create(model_cfg, tx, 0, shardings)
  graphdef, _, _ = state_lib.model_graph(model_cfg)
  train, evaluate = step_lib.compile_steps(
      image_task.ImageClassification(), graphdef, tx, optimizer.schedule(OPT, 10), 1,
      model_cfg.dropout > 0, mesh_lib.rules("dp"), shardings, mesh_lib.batch_sharding(mesh))
  it = images.train_iterator(digits[0], 16, seed=0, max_shift=1)
  losses = []
  with jax.default_matmul_precision("highest"):
    for _ in range(n):
      state, m = train(state, next(it))
      losses.append(float(m["train_loss"]))
    val = images.fixed_batches(digits[1], 16)
    stacked = {k: np.stack([b[k] for b in val]) for k in val[0]}
    metrics = jax.device_get(evaluate(state.params, stacked))
  return losses, jax.device_get(state.params), metrics


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_dp_on_8_devices_equals_one_device(digits, kind):
  cfg = config_lib.section(
      "model", "classify", kind=kind, width=8, embed_dim=16, num_heads=2, dropout=0.1,
      num_classes=10, image_height=8, image_width=8)
  one = _steps(cfg, (1, 1, 1), jax.devices()[:1], digits)
  eight = _steps(cfg, (8, 1, 1), jax.devices(), digits)
  assert one[0][0] != one[0][-1]
  np.testing.assert_allclose(eight[0], one[0], rtol=1e-5)
  numerics.assert_trees_close(eight[1], one[1], rtol=1e-5)
  np.testing.assert_allclose(eight[2]["accuracy"], one[2]["accuracy"], rtol=1e-6)
  assert 0.0 <= one[2]["accuracy"] <= 1.0


def test_fixed_batches_count_each_example_once(digits):
  _, val, _, _ = digits
  batches = images.fixed_batches(val, 64)
  weights = np.concatenate([b["weights"] for b in batches])
  assert weights.sum() == len(val.labels) and len(batches) == -(-len(val.labels) // 64)


def test_shift_augmentation_moves_pixels():
  image = np.zeros((8, 8), np.float32)
  image[3, 4] = 1.0
  shifted = [images._shift(image, np.random.default_rng(s), 1) for s in range(20)]
  positions = {tuple(np.argwhere(s == 1.0)[0]) for s in shifted if (s == 1.0).any()}
  assert len(positions) > 1 and all(abs(r - 3) <= 1 and abs(c - 4) <= 1 for r, c in positions)


COMMON = ["--config", "configs/digits_cnn.py", "--config.train.log_every=1",
          "--config.train.checkpoint_every=10", "--config.optimizer.decay_steps=20",
          "--config.train.eval_every=10", "--config.model.width=8"]


def _rows(workdir):
  return metric_rows(workdir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits") / "run"
  run_cli("treadle.train.main", *COMMON, "--workdir", workdir, "--config.train.num_steps=20")
  return workdir


def test_run_writes_accuracy_and_confusion_matrix(trained):
  rows = _rows(trained)
  assert any("val_accuracy" in r for r in rows) and "test_accuracy" in rows[-1]
  assert "train_accuracy" in rows[0] and "images_per_second" in rows[0]
  assert (trained / "confusion_matrix.png").stat().st_size > 1000
  assert (trained / "preprocess.json").exists()


@pytest.fixture(scope="module")
def trained_150(tmp_path_factory):
  """Long enough to learn: 150 steps reach 73.7% test accuracy (measured), 20 stay below
  chance."""
  workdir = tmp_path_factory.mktemp("digits150") / "run"
  c = digits_cnn.get_config()  # trained in this process: the subject is what the run learns
  c.model.width = 8
  c.train.update(num_steps=150, eval_every=50, log_every=50, checkpoint_every=150)
  loop.train(config_lib.split(c), workdir)
  return workdir


def test_accuracy_is_above_chance_and_agrees_with_the_confusion_matrix(trained_150, digits):
  last = _rows(trained_150)[-1]
  saved = json.loads((trained_150 / "confusion_matrix.json").read_text())
  matrix = np.array(saved["matrix"])
  assert saved["step"] == last["test_checkpoint_step"] and matrix.shape == (10, 10)
  test_labels = digits[2].labels
  assert matrix.sum() == len(test_labels)  # every test image once
  np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(test_labels, minlength=10))
  chance = np.bincount(test_labels).max() / len(test_labels)  # always the commonest digit
  assert last["test_accuracy"] > chance + 0.3, (last["test_accuracy"], chance)
  np.testing.assert_allclose(last["test_accuracy"], np.trace(matrix) / matrix.sum(), rtol=1e-6)


def test_resume_is_bitwise_identical(trained, tmp_path):
  resumed = tmp_path / "run"
  run_cli("treadle.train.main", *COMMON, "--workdir", resumed, "--config.train.num_steps=10")
  run_cli("treadle.train.main", *COMMON, "--workdir", resumed, "--config.train.num_steps=20")
  losses = lambda w: {r["step"]: r["train_loss"] for r in _rows(w) if "train_loss" in r}
  a, b = losses(trained), losses(resumed)
  assert [a[s] for s in range(11, 21)] == [b[s] for s in range(11, 21)]
  pa = predictor.Predictor.from_workdir(trained, 20).params
  pb = predictor.Predictor.from_workdir(resumed, 20).params
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(pa), jax.device_get(pb))


def test_predict_in_another_process_matches_the_library(trained, digits, tmp_path):
  from sklearn import datasets
  raw = datasets.load_digits().images[:6].astype(np.float32)
  np.save(tmp_path / "six.npy", raw)
  proc = run_cli("treadle.infer.predict", "--workdir", trained, "--input", tmp_path / "six.npy", "--json")
  cli = [json.loads(line) for line in proc.stdout.splitlines()]
  library = predictor.Predictor.from_workdir(trained).predict(raw)
  assert [c["label"] for c in cli] == [r["label"] for r in library]
  np.testing.assert_allclose([c["probability"] for c in cli],
                             [r["probability"] for r in library], rtol=1e-5)


@pytest.mark.parametrize("make,match", [
    (lambda d: np.save(d / "bad.npy", np.zeros((7, 7))), "is not (8, 8)"),
    (lambda d: (d / "bad.png").write_text("not an image"), "not a readable image"),
    (lambda d: None, "no such file"),
])
def test_bad_input_is_a_one_line_error(trained, tmp_path, make, match):
  make(tmp_path)
  name = "bad.npy" if "7, 7" in match or "is not" in match else "bad.png"
  proc = run_cli("treadle.infer.predict", "--workdir", trained, "--input", tmp_path / name, check=False)
  assert proc.returncode == 2
  assert match in proc.stderr.strip().splitlines()[-1]


def test_predict_refuses_a_language_model_run(tmp_path, text_file):
  lm = tmp_path / "lm"
  c = tiny.get_config()  # a language-model run directory, trained in this process
  c.data.path = str(text_file)
  c.train.num_steps = 2
  loop.train(config_lib.split(c), lm)
  proc = run_cli("treadle.infer.predict", "--workdir", lm, "--input", text_file, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: {str(lm)!r} is a 'lm' run, not an image classifier")


def test_predict_bad_step_is_a_one_line_error(trained, tmp_path):
  np.save(tmp_path / "one.npy", np.zeros((8, 8)))
  proc = run_cli("treadle.infer.predict", "--workdir", trained, "--input", tmp_path / "one.npy",
                 "--step", "abc", check=False)
  assert proc.returncode == 2
  assert "--step='abc' must be a number" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("write,match", [
    (lambda path: np.save(path, np.full((8, 8), np.nan)), "non-finite pixel values"),
    (lambda path: path.write_bytes(b"\x93NUMPY\x01\x00garbage"), "not a readable .npy array"),
])
def test_an_all_nan_or_unreadable_npy_is_named(trained, tmp_path, write, match):
  write(tmp_path / "bad.npy")
  proc = run_cli("treadle.infer.predict", "--workdir", trained, "--input", tmp_path / "bad.npy",
                 check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error: --input ") and str(tmp_path / "bad.npy") in line and match in line
