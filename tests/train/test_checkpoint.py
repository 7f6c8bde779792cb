"""Checkpoints: full round trip, other meshes, the data iterator, parameters-only sampling."""
import errno
import json
import logging

import jax
import numpy as np
import pytest

from treadle.data import text
from treadle.infer import sampler as sampler_lib
from tests.conftest import run_cli
from treadle.train import checkpoint
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib
from treadle.train import optimizer
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train.tasks import lm

MODEL = config_lib.section(
    "model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32)


def _setup(shape, rules, devices=None):
  mesh = mesh_lib.make_mesh(shape, devices)
  tx = optimizer.build(config_lib.section("optimizer", warmup_steps=0), 10)
  return tx, state_lib.shardings(MODEL, tx, mesh, mesh_lib.rules(rules)), mesh


def _trained_state(tx, shardings, mesh, seed):
  state = state_lib.create(MODEL, tx, seed, shardings)
  graphdef, _, _ = state_lib.model_graph(MODEL)
  train, _ = step_lib.compile_steps(lm.LanguageModeling(), graphdef, tx, optimizer.schedule(
      config_lib.section("optimizer"), 10), 1, False, mesh_lib.rules("fsdp_tp"), shardings,
      mesh_lib.batch_sharding(mesh))
  tokens = np.random.default_rng(0).integers(0, 61, (8, 17), dtype=np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  for _ in range(2):
    state, _ = train(state, jax.device_put(batch, mesh_lib.batch_sharding(mesh)))
  return state


def test_round_trip_into_another_seed_and_other_meshes(tmp_path):
  tx, shardings, mesh = _setup((2, 2, 2), "fsdp_tp")
  state = _trained_state(tx, shardings, mesh, seed=0)
  other = state_lib.create(MODEL, tx, 1, shardings)
  assert not np.array_equal(state.params["token_embed"], other.params["token_embed"])
  mu = state.opt_state[1][0].mu
  assert all(np.abs(np.asarray(m)).max() > 0 for m in jax.tree.leaves(mu))  # real moments

  tokens = np.arange(4000, dtype=np.int32)
  data_iter = text.train_iterator(tokens, 16, 8, seed=0)
  for _ in range(3):
    next(data_iter)
  mgr = checkpoint.manager(tmp_path)
  checkpoint.save(mgr, 2, state, data_iter, {"hello": "config"}, val_loss=1.0)
  mgr.wait_until_finished()
  expected_next = next(data_iter)["inputs"]

  for shape, rules, devices in [((2, 2, 2), "fsdp_tp", None), ((1, 1, 1), "dp", jax.devices()[:1]),
                                ((1, 4, 1), "fsdp", jax.devices()[:4])]:
    tx2, shardings2, _ = _setup(shape, rules, devices)
    fresh_iter = text.train_iterator(tokens, 16, 8, seed=0)
    restored = checkpoint.restore(mgr, 2, state_lib.abstract_state(MODEL, tx2, shardings2),
                                  fresh_iter)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored),
                 jax.device_get(state))
    assert restored.params["blocks"][0]["mlp"]["fc"]["w"].sharding == \
        shardings2.params["blocks"][0]["mlp"]["fc"]["w"]
    np.testing.assert_array_equal(next(fresh_iter)["inputs"], expected_next)
  assert checkpoint.saved_config(mgr, 2) == {"hello": "config"}
  assert checkpoint.best_step(mgr) == 2
  mgr.close()


def test_keeps_latest_k_plus_best(tmp_path):
  tx, shardings, mesh = _setup((8, 1, 1), "dp")
  state = state_lib.create(MODEL, tx, 0, shardings)
  mgr = checkpoint.manager(tmp_path, keep=2, keep_best=True)
  for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None), (5, 2.5)]:
    checkpoint.save(mgr, step, state, None, {}, val_loss=val)
    mgr.wait_until_finished()
  assert sorted(mgr.all_steps()) == [2, 4, 5]
  assert checkpoint.best_step(mgr) == 2 and checkpoint.resolve_step(mgr, "best") == 2
  with pytest.raises(FileNotFoundError, match="no checkpoint step 3"):
    checkpoint.resolve_step(mgr, 3)
  mgr.close()


def test_fsdp_tp_checkpoint_samples_identically_on_other_meshes(tmp_path, text_file):
  workdir = tmp_path / "run"
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", "--config.train.num_steps=10",
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
          "--config.mesh.rules=fsdp_tp", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert "'tensor', 'fsdp'" in (workdir / "sharding.json").read_text()  # really split
  on_train_mesh = sampler_lib.Sampler.from_workdir(workdir, None, (2, 2, 2), "fsdp_tp")
  one = sampler_lib.Sampler.from_workdir(workdir, None, (1, 1, 1), "dp", jax.devices()[:1])
  four = sampler_lib.Sampler.from_workdir(workdir, None, (1, 4, 1), "fsdp", jax.devices()[:4])
  for other in (one, four):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(other.params),
                 jax.device_get(on_train_mesh.params))
  args = dict(max_new_tokens=40, temperature=0.0)
  reference = on_train_mesh.generate(["KING", "the"], **args)
  assert one.generate(["KING", "the"], **args) == reference
  assert four.generate(["KING", "the"], **args) == reference


class _Reader:
  """Stands in for Orbax's read-only manager: one step, records whether it was closed."""
  directory, closed = "ckpt", False

  def all_steps(self):
    return [5]

  def close(self):
    self.closed = True


@pytest.mark.parametrize("step,error", [(None, OSError), (7, FileNotFoundError)])
def test_load_params_closes_the_reader_when_the_restore_fails(monkeypatch, step, error):
  opened = _Reader()
  monkeypatch.setattr(checkpoint, "reader", lambda workdir: opened)

  def broken_restore(mgr, step, target):
    raise OSError("truncated array file")
  monkeypatch.setattr(checkpoint, "restore_params", broken_restore)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with pytest.raises(error):
    checkpoint.load_params("run", step, MODEL,
                           lambda abstract, _: jax.tree.map(lambda _: device, abstract))
  assert opened.closed


class _Steps:
  """Stands in for a CheckpointManager over step directories 1 and 2 (restore is patched)."""
  def __init__(self, root):
    self.directory = root / "checkpoints"
    for step in (1, 2):
      (self.directory / str(step)).mkdir(parents=True)

  def all_steps(self):
    return [1, 2]

  def reload(self):
    pass


def _wrapped(outer: Exception, cause: Exception) -> Exception:
  """As Orbax raises a TensorStore failure: a plain Exception whose cause says what it is."""
  outer.__cause__ = cause
  return outer


def _restore_failing_at_step_2(monkeypatch, error: BaseException) -> None:
  def restore(mgr, step, abstract, data_iter):
    if step == 2:
      raise error
    return "state 1"
  monkeypatch.setattr(checkpoint, "restore", restore)
  monkeypatch.setattr(checkpoint, "restore_extra", lambda mgr, step: {})


@pytest.mark.parametrize("error", [
    FileNotFoundError(2, "No such file or directory", "checkpoints/2/state/_METADATA"),
    json.JSONDecodeError("Expecting value", "{", 1),
    KeyError('Item "data_iter" was not found in the checkpoint. Available items: [state]'),
    _wrapped(Exception("Encountered error while reading array index"),
             ValueError('OUT_OF_RANGE: Error reading "params.token_embed/0.0"')),
    ValueError('DATA_LOSS: Error opening "zarr" driver'),
], ids=["missing file", "unparseable json", "missing item", "truncated shard", "data loss"])
def test_a_damaged_step_is_moved_aside(tmp_path, monkeypatch, caplog, error):
  mgr = _Steps(tmp_path)
  _restore_failing_at_step_2(monkeypatch, error)
  step, state, _ = checkpoint.restore_newest_intact(mgr, None, None, logging.getLogger("t"))
  assert (step, state) == (1, "state 1")
  assert (tmp_path / "damaged_checkpoints" / "2").is_dir()
  assert not (tmp_path / "checkpoints" / "2").exists()
  assert "checkpoint step 2 is damaged" in caplog.text


@pytest.mark.parametrize("error,message", [
    (OSError(errno.EIO, "Input/output error", "checkpoints/2/state/d/x"), "Input/output error"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (MemoryError(), "MemoryError"),
    (_wrapped(Exception("Encountered error while reading array index"),
              ValueError("RESOURCE_EXHAUSTED: Out of memory allocating 4096 bytes")),
     "Encountered error"),
    (ValueError("UNAVAILABLE: Error reading local file"), "UNAVAILABLE"),
], ids=["EIO", "ENOSPC", "out of memory", "tensorstore out of memory", "unavailable"])
def test_a_read_failure_that_is_not_damage_fails_and_moves_nothing(tmp_path, monkeypatch,
                                                                   error, message):
  """A passing I/O error or out-of-memory says nothing about the files: the step is kept
  where it is and the run stops with the error in one line."""
  mgr = _Steps(tmp_path)
  _restore_failing_at_step_2(monkeypatch, error)
  with pytest.raises(RuntimeError, match="checkpoint step 2 .* could not be read") as raised:
    checkpoint.restore_newest_intact(mgr, None, None, logging.getLogger("t"))
  assert message in str(raised.value) and "\n" not in str(raised.value)
  assert raised.value.__cause__ is error  # the disk-error report in main.py walks the chain
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert not (tmp_path / "damaged_checkpoints").exists()


def test_an_interrupt_while_restoring_moves_nothing(tmp_path, monkeypatch):
  mgr = _Steps(tmp_path)
  _restore_failing_at_step_2(monkeypatch, KeyboardInterrupt())
  with pytest.raises(KeyboardInterrupt):
    checkpoint.restore_newest_intact(mgr, None, None, logging.getLogger("t"))
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert not (tmp_path / "damaged_checkpoints").exists()


def test_best_never_picks_a_nan_val_loss(tmp_path):
  """Nor does retention keep a NaN step as the best: NaN compares false both ways, so a
  plain min() or sort can rank it first."""
  tx, shardings, _ = _setup((8, 1, 1), "dp")
  state = state_lib.create(MODEL, tx, 0, shardings)
  mgr = checkpoint.manager(tmp_path, keep=1, keep_best=True)
  for step, val in [(1, float("nan")), (2, 2.0), (3, float("nan")), (4, 3.0)]:
    checkpoint.save(mgr, step, state, None, {}, val_loss=val)
    mgr.wait_until_finished()
  assert sorted(mgr.all_steps()) == [2, 4]
  assert checkpoint.best_step(mgr) == 2 and checkpoint.resolve_step(mgr, "best") == 2
  mgr.close()


def test_best_of_only_nan_steps_is_the_latest_without_nan(tmp_path):
  tx, shardings, _ = _setup((8, 1, 1), "dp")
  state = state_lib.create(MODEL, tx, 0, shardings)
  mgr = checkpoint.manager(tmp_path, keep=3, keep_best=False)
  for step, val in [(1, None), (2, float("nan")), (3, float("nan"))]:
    checkpoint.save(mgr, step, state, None, {}, val_loss=val)
    mgr.wait_until_finished()
  assert checkpoint.best_step(mgr) is None and checkpoint.resolve_step(mgr, "best") == 1
  mgr.close()


# a process that exits right after opening its checkpoints (a SIGTERM at start-up)
_EXIT_AFTER_OPENING = """
import pathlib, sys
from treadle.train import checkpoint
saved = pathlib.Path(sys.argv[1]) / "checkpoints"
saved.mkdir(parents=True)
for i in range(400):  # stale temporary dirs of killed writes: the cleanup takes a while
  (saved / f"{i}.orbax-checkpoint-tmp-{1000 + i}").mkdir()
checkpoint.manager(sys.argv[1])
sys.exit(75)
"""


def test_exiting_right_after_opening_the_checkpoints_is_quiet_and_cleans_up(tmp_path):
  """Orbax removes stale temporary dirs in a thread nothing awaits before the first save; a
  process exiting meanwhile printed its 'cannot schedule new futures after interpreter
  shutdown' traceback (a CI failure of the SIGTERM-at-start-up test)."""
  import subprocess
  import sys
  from tests.conftest import REPO, child_env
  proc = subprocess.run([sys.executable, "-c", _EXIT_AFTER_OPENING, tmp_path], cwd=REPO,
                        env=child_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 75 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert not list((tmp_path / "checkpoints").iterdir())  # the cleanup finished
