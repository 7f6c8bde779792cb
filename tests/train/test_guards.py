"""Non-finite guard, early stopping, and fine-tuning from another run (init_from).

Runs whose subject is the command line (exit 2, its last stderr line) use treadle-train in a
subprocess; the others train in this process (loop.train: no interpreter and jax start-up)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.conftest import metric_rows, run_cli
from treadle.configs import tiny
from treadle.train import config as config_lib
from treadle.train import loop
from treadle.train import mesh as mesh_lib
from treadle.train import optimizer
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train.tasks import lm


def _rows(workdir):
  return metric_rows(workdir)


def _train(workdir, text_file, *overrides, check=True):
  return run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
                 f"--config.data.path={text_file}", *overrides, check=check)


def _train_here(workdir, text_file, **overrides) -> dict:
  """configs/tiny.py trained in this process with `overrides` ("section.key": value)."""
  c = tiny.get_config()
  c.data.path = str(text_file)
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return loop.train(config_lib.split(c), workdir)


def test_non_finite_step_is_not_applied():
  model = config_lib.section(
      "model", vocab_size=61, max_seq_len=8, num_layers=1, num_heads=2, embed_dim=16)
  mesh = mesh_lib.make_mesh((8, 1, 1))
  opt = config_lib.section("optimizer")
  tx = optimizer.build(opt, 10)
  shardings = state_lib.shardings(model, tx, mesh, mesh_lib.rules("dp"))
  state = state_lib.create(model, tx, 0, shardings)
  poisoned = state._replace(params={**state.params, "ln_f": {"scale": jnp.full((16,), jnp.nan)}})
  before = jax.device_get(poisoned)
  graphdef, _, _ = state_lib.model_graph(model)
  train, _ = step_lib.compile_steps(lm.LanguageModeling(), graphdef, tx,
                                    optimizer.schedule(opt, 10), 1, False,
                                    mesh_lib.rules("dp"), shardings, mesh_lib.batch_sharding(mesh))
  batch = {"inputs": np.zeros((8, 8), np.int32), "targets": np.ones((8, 8), np.int32)}
  after, metrics = train(poisoned, batch)
  assert not bool(metrics["finite"]) and int(after.step) == 1
  after = jax.device_get(after)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
               (after.params, after.opt_state), (before.params, before.opt_state))


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                              text_file):
  workdir = tmp_path / "run"
  proc = _train(workdir, text_file, "--config.optimizer.learning_rate=1e30",
                "--config.optimizer.warmup_steps=0", "--config.train.checkpoint_every=1",
                "--config.train.log_every=1", check=False)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert "non-finite loss or gradient at step" in line
  bad_step = int(line.split("at step ")[1].split(";")[0])
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
  assert saved and max(saved) < bad_step  # nothing saved from the bad step on


def test_skips_up_to_the_configured_count(tmp_path, text_file):
  workdir = tmp_path / "run"
  proc = _train(workdir, text_file, "--config.optimizer.learning_rate=1e30",
                "--config.optimizer.warmup_steps=0", "--config.train.max_nonfinite_steps=3",
                "--config.train.log_every=1", check=False)
  assert proc.returncode == 2
  assert "non-finite loss or gradient at step" in proc.stderr.strip().splitlines()[-1]
  assert len([r for r in _rows(workdir) if r.get("nonfinite")]) == 4


def test_early_stopping_then_test_loss_on_best(tmp_path, text_file):
  workdir = tmp_path / "run"
  _train_here(workdir, text_file, **{
      "optimizer.learning_rate": 1e-9, "optimizer.min_learning_rate": 1e-9,
      "train.eval_every": 2, "train.early_stopping_patience": 2,
      "train.early_stopping_min_delta": 0.001})
  rows = _rows(workdir)
  assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6]  # best at 2, then 2 misses
  assert rows[-1]["step"] == 6 and "test_loss" in rows[-1]
  assert rows[-1]["test_checkpoint_step"] in (2, 4, 6)


def test_target_val_loss_stops_at_the_first_evaluation_reaching_it(tmp_path, text_file):
  workdir = tmp_path / "run"
  # 12 steps: without the target the run would go on past step 10 (evaluating at 12)
  run = {"train.eval_every": 2, "train.num_steps": 12, "optimizer.learning_rate": 1e-2}
  _train_here(workdir, text_file, **run)
  vals = {r["step"]: r["val_loss"] for r in _rows(workdir) if "val_loss" in r}
  target = vals[10]  # a loss the same run first reaches at some step <= 10
  first = min(step for step, v in vals.items() if v <= target)
  timed = tmp_path / "timed"
  _train_here(timed, text_file, **run, **{"train.target_val_loss": target})
  summary = json.loads((timed / "summary.json").read_text())
  assert summary["outcome"] == "reached_target" and summary["step"] == first
  assert [r["step"] for r in _rows(timed) if "val_loss" in r][-1] == first


def test_init_from_loads_params_and_checks_shapes(tmp_path, text_file):
  source = tmp_path / "source"
  _train_here(source, text_file, **{"train.num_steps": 40, "train.log_every": 1})
  other_text = tmp_path / "other.txt"
  other_text.write_text(text_file.read_text()[-200_000:])
  tuned = tmp_path / "tuned"
  _train_here(tuned, other_text, **{"train.init_from": str(source), "train.num_steps": 5,
                                    "train.log_every": 1})
  first_source = [r["train_loss"] for r in _rows(source) if "train_loss" in r][0]
  first_tuned = [r["train_loss"] for r in _rows(tuned) if "train_loss" in r][0]
  assert first_tuned < first_source - 0.3  # starts from trained weights, not from scratch
  assert (tuned / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()

  bad = run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", tmp_path / "bad",
                f"--config.data.path={other_text}", f"--config.train.init_from={source}",
                "--config.model.embed_dim=64", check=False)
  assert bad.returncode == 2 and "embed_dim" in bad.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "bad").exists()  # refused before anything was written
  bad = run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", tmp_path / "bad2",
                f"--config.data.path={other_text}", f"--config.train.init_from={source}",
                "--config.data.tokenizer=byte", check=False)
  assert bad.returncode == 2 and "tokenizer" in bad.stderr.strip().splitlines()[-1]


def _test_loss_of_step(workdir, step: int) -> float:
  """The test-split loss of checkpoint `step`, computed here from the saved parameters."""
  from treadle.data import corpus
  from treadle.data import tokenizers
  from treadle.infer import sampler as sampler_lib
  params = sampler_lib.Sampler.from_workdir(workdir, step).params
  cfg = config_lib.from_json(workdir / "config.json")
  data = corpus.load(cfg.data, tokenizers.load(workdir))
  task = lm.LanguageModeling()
  batches = task.eval_batches(data.test, cfg, 0, 1)
  graphdef, _, _ = state_lib.model_graph(cfg.model)
  model = nnx.merge(graphdef, jax.device_get(params))
  with jax.default_matmul_precision("highest"):
    return float(np.mean([task.loss(model, b, None)[0] for b in batches]))


def test_test_loss_comes_from_the_best_val_checkpoint_when_not_the_last(tmp_path, text_file):
  workdir = tmp_path / "run"
  # a learning rate far too high: validation loss jumps around instead of falling, so the
  # best of the evaluations (every 2 steps, all kept as checkpoints) is not the last one
  with jax.default_matmul_precision("highest"):  # what train.matmul_precision sets in the CLI
    _train_here(workdir, text_file, **{
        "train.num_steps": 20, "train.eval_every": 2, "train.checkpoint_every": 2,
        "train.keep_checkpoints": 20, "optimizer.learning_rate": 20.0,
        "optimizer.min_learning_rate": 20.0, "optimizer.warmup_steps": 1,
        "train.matmul_precision": "highest"})
  vals = {r["step"]: r["val_loss"] for r in _rows(workdir) if "val_loss" in r}
  best = min(vals, key=vals.get)
  assert best != 20 and vals[20] > vals[best] + 0.01, vals  # the case this test is about
  last = _rows(workdir)[-1]
  assert last["step"] == 20 and last["test_checkpoint_step"] == best
  at_best, at_20 = _test_loss_of_step(workdir, best), _test_loss_of_step(workdir, 20)
  assert abs(at_20 - at_best) > 0.01
  np.testing.assert_allclose(last["test_loss"], at_best, rtol=1e-5)
