"""Checkpoints: full round trip, other meshes, the data iterator, parameters-only sampling."""
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
