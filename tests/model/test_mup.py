"""mup: each rule against its definition, Muon's choice, and bitwise sp at the base width."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.train import test_sharding as sharding
from treadle.model import layers
from treadle.train import config as config_lib
from treadle.train import optimizer
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train.tasks import lm

SP = config_lib.section("model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4,
                        embed_dim=32, mup_base_width=32)


def _train(model, opt_name="adamw", steps=3):
  """Losses and params of `steps` AdamW/Lion/Muon steps from seed 0, with the optimizer the
  trainer builds (mup: hidden lr x 1/m)."""
  opt = config_lib.section("optimizer", name=opt_name, warmup_steps=1)
  specs = state_lib.model_graph(model)[2]
  tx = optimizer.build(opt, 10, specs, optimizer.hidden_lr_scale(model))
  mesh = sharding.mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
  shardings = state_lib.shardings(model, tx, mesh, sharding.mesh_lib.rules("dp"))
  state = state_lib.create(model, tx, 0, shardings)
  graphdef = state_lib.model_graph(model)[0]
  train, _ = step_lib.compile_steps(lm.LanguageModeling(), graphdef, tx,
                                    optimizer.schedule(opt, 10), 1, False, None, shardings,
                                    sharding.mesh_lib.batch_sharding(mesh))
  losses = []
  for b in sharding.batches(steps):
    state, m = train(state, b)
    losses.append(float(m["train_loss"]))
  return losses, jax.device_get(state.params)


@pytest.mark.parametrize("opt_name", ["adamw", "lion"])
def test_mup_at_its_base_width_trains_bitwise_like_sp(opt_name):
  mup = dataclasses.replace(SP, parametrization="mup")
  assert mup.width_mult == 1.0
  sp_losses, sp_params = _train(SP, opt_name)
  mup_losses, mup_params = _train(mup, opt_name)
  assert sp_losses == mup_losses and sp_losses[0] != sp_losses[-1]
  jax.tree.map(np.testing.assert_array_equal, sp_params, mup_params)


def test_hidden_init_variance_is_divided_by_m_and_embeddings_are_not():
  wide = dataclasses.replace(SP, embed_dim=128)  # m = 4 under mup
  sp = state_lib.random_params(wide, 0)
  mup = state_lib.random_params(dataclasses.replace(wide, parametrization="mup"), 0)
  for path in (("blocks", 0, "attn", "qkv", "w"), ("blocks", 1, "mlp", "fc", "w")):
    a, b = sp, mup
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_allclose(np.asarray(b), np.asarray(a) / 2.0, rtol=1e-6)  # std / sqrt(4)
  np.testing.assert_array_equal(mup["token_embed"], sp["token_embed"])
  np.testing.assert_array_equal(mup["blocks"][0]["ln1"]["scale"], sp["blocks"][0]["ln1"]["scale"])


def test_logits_are_divided_by_m_and_attention_scores_scale_as_sqrt_d_base_over_d_head():
  wide = dataclasses.replace(SP, embed_dim=128, parametrization="mup")  # m 4, d_head 32, d_base 8
  assert wide.attention_scale_mult == pytest.approx(math.sqrt(8 / 32))
  params = state_lib.random_params(wide, 0)
  graphdef = state_lib.model_graph(wide)[0]
  sp_graph = state_lib.model_graph(dataclasses.replace(wide, parametrization="sp"))[0]
  model, sp_model = nnx.merge(graphdef, params), nnx.merge(sp_graph, params)
  x = jax.random.normal(jax.random.key(0), (1, 4, 128))
  h = model.ln_f(x)
  np.testing.assert_allclose(np.asarray(h @ params["token_embed"].T / 4.0)[..., :61],
                             np.asarray(model._logits(h))[..., :61], rtol=1e-5, atol=1e-6)
  q = jax.random.normal(jax.random.key(1), (1, 4, 4, 1, 32))
  k = jax.random.normal(jax.random.key(2), (1, 4, 4, 32))
  mup_scores = model.blocks[0].attn._scores(q, k, "bsgk")
  sp_scores = sp_model.blocks[0].attn._scores(q, k, "bsgk")
  # sqrt(d_base) / d_head = (1 / sqrt(d_head)) x sqrt(d_base / d_head)
  np.testing.assert_allclose(np.asarray(mup_scores),
                             np.asarray(sp_scores) * math.sqrt(8) / 32 * math.sqrt(32),
                             rtol=1e-5)


def _updates(model, opt_name, scale):
  opt = config_lib.section("optimizer", name=opt_name, warmup_steps=0, weight_decay=0.0,
                           grad_clip_norm=0.0)
  specs = state_lib.model_graph(model)[2]
  params = state_lib.random_params(model, 0)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) * jnp.sign(p + 1e-3), params)
  tx = optimizer.build(opt, 10, specs, scale)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize("opt_name", ["adamw", "lion"])
def test_adam_and_lion_lr_on_hidden_matrices_is_divided_by_m(opt_name):
  model = dataclasses.replace(SP, embed_dim=64, parametrization="mup")  # m = 2
  sp, mup = _updates(model, opt_name, None), _updates(model, opt_name, 0.5)
  np.testing.assert_allclose(mup["blocks"][0]["attn"]["out"]["w"],
                             sp["blocks"][0]["attn"]["out"]["w"] / 2, rtol=1e-6)
  np.testing.assert_allclose(mup["blocks"][1]["mlp"]["proj"]["w"],
                             sp["blocks"][1]["mlp"]["proj"]["w"] / 2, rtol=1e-6)
  for vector in (("token_embed",), ("blocks", 0, "ln1", "scale"), ("position_embed",)):
    a, b = sp, mup
    for k in vector:
      a, b = a[k], b[k]
    np.testing.assert_array_equal(a, b)


def test_muon_keeps_its_lr_under_mup():
  """Muon's orthogonalised update is already width-independent in spectral norm: mup leaves
  its lr (and its AdamW part's) unscaled, by choice."""
  model = dataclasses.replace(SP, embed_dim=64, parametrization="mup")
  sp, mup = _updates(model, "muon", None), _updates(model, "muon", 0.5)
  jax.tree.map(np.testing.assert_array_equal, sp, mup)


def test_mup_base_width_must_give_whole_heads():
  with pytest.raises(ValueError, match="model.mup_base_width=30 is not divisible"):
    dataclasses.replace(SP, parametrization="mup", mup_base_width=30)


def test_a_mup_run_trains_and_its_export_is_refused_in_one_line(tmp_path, text_file):
  from tests.conftest import run_cli
  workdir = tmp_path / "run"
  run_cli("treadle.train.main", "--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.path={text_file}", "--config.train.num_steps=2",
          "--config.model.parametrization=mup", "--config.model.mup_base_width=16")
  proc = run_cli("treadle.hf.export_cli", f"--workdir={workdir}", f"--hf_dir={tmp_path / 'hf'}",
                 check=False)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "model.parametrization=mup at width multiplier 2" in lines[0]
  assert not (tmp_path / "hf").exists()
