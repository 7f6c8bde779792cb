"""Optimizer selection (AdamW, Lion, Muon + AdamW): partition, schedule, decay, clipping."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from optax import contrib

from treadle.configs import shakespeare_char_cpu
from tests import numerics
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib
from treadle.train import optimizer
from treadle.train import state as state_lib

NAMES = config_lib.OPTIMIZERS
D, F, H, K, V = 8, 16, 2, 4, 24
# a small parameter tree with the logical names the model uses (fused qkv: D -> 3 x H x K)
SPECS = {"qkv": P("embed", None, "heads", "head_dim"), "out": P("heads", "head_dim", "embed"),
         "proj": P("mlp", "embed"), "scale": P("embed"), "embed": P("vocab", "embed")}
SHAPES = {"qkv": (D, 3, H, K), "out": (H, K, D), "proj": (F, D), "scale": (D,), "embed": (V, D)}


def _cfg(name: str, **kw) -> config_lib.OptimizerConfig:
  kw = {"warmup_steps": 3, "decay_steps": 8, "weight_decay": 0.1, "grad_clip_norm": 0.0, **kw}
  return config_lib.section("optimizer", name=name, **kw)


def _tree(seed: int, scale: float = 1.0) -> dict:
  keys = jax.random.split(jax.random.key(seed), len(SHAPES))
  return {n: scale * jax.random.normal(k, s) for k, (n, s) in zip(keys, SHAPES.items())}


@functools.cache
def _jitted(cfg: config_lib.OptimizerConfig):
  tx = optimizer.build(cfg, 8, SPECS)
  return tx.init, jax.jit(tx.update)


def _updates(cfg, grads_seq, params=None) -> list[dict]:
  """The updates of cfg's optimizer for each gradient in turn."""
  init, update = _jitted(cfg)
  params = _tree(0) if params is None else params
  state, out = init(params), []
  for g in grads_seq:
    u, state = update(g, state, params)
    out.append(u)
  return out


def _types(tree) -> set[str]:
  """Names of every NamedTuple state in an optimizer state."""
  if isinstance(tree, dict):
    return set().union(*map(_types, tree.values()))
  if isinstance(tree, tuple):
    return {type(tree).__name__}.union(*map(_types, tree))
  return set()


@pytest.mark.parametrize("name,expected,absent", [
    ("adamw", {"ScaleByAdamState"}, {"MuonState", "ScaleByLionState"}),
    ("lion", {"ScaleByLionState"}, {"ScaleByAdamState", "MuonState"}),
    ("muon", {"PartitionState", "MuonState", "ScaleByAdamState"}, {"ScaleByLionState"})])
def test_name_selects_the_transform(name, expected, absent):
  types = _types(optimizer.build(_cfg(name, grad_clip_norm=1.0), 8, SPECS).init(_tree(0)))
  assert expected <= types and not absent & types, types


def test_default_is_the_old_adamw_state_layout():
  # existing checkpoints (chain(clip, adamw)) must still restore into the default optimizer
  cfg = config_lib.section("optimizer")
  old = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      lambda step: 1e-3, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
  params = _tree(0)
  assert cfg.name == "adamw"
  assert (jax.tree.structure(optimizer.build(cfg, 8).init(params)) ==
          jax.tree.structure(old.init(params)))


@pytest.mark.parametrize("spec,dims", [
    (("embed", None, "heads", "head_dim"), ((0,), (2, 3))),              # fused qkv
    (("layers", "embed", None, "heads", "head_dim"), ((1,), (3, 4))),    # scanned qkv
    (("embed", "heads", "head_dim"), ((0,), (1, 2))),                    # q
    (("embed", None, "kv_heads", "head_dim"), ((0,), (2, 3))),           # kv (GQA)
    (("heads", "head_dim", "embed"), ((0, 1), (2,))),                    # out
    (("layers", "heads", "head_dim", "embed"), ((1, 2), (3,))),          # scanned out
    (("embed", "mlp"), ((0,), (1,))),                                    # fc
    (("embed", None, "mlp"), ((0,), (2,))),                              # swiglu fc
    (("mlp", "embed"), ((0,), (1,))),                                    # proj
    (("layers", "mlp", "embed"), ((1,), (2,))),                          # scanned proj
])
def test_muon_dims_of_hidden_matrices(spec, dims):
  assert optimizer.muon_dims(P(*spec)) == contrib.MuonDimensionNumbers(*dims)


@pytest.mark.parametrize("spec", [
    ("vocab", "embed"), ("embed", "vocab"), ("embed",), ("layers", "embed"), (None, "embed"),
    (None, "heads", "head_dim"), ("layers", "head_dim"), (None, None, None, "mlp"),
    ("mlp", None), ("embed", None)])
def test_muon_leaves_embeddings_heads_and_vectors_to_adamw(spec):
  assert optimizer.muon_dims(P(*spec)) is None


def _muon_paths(model_cfg) -> set[str]:
  _, _, specs = state_lib.model_graph(model_cfg)
  labels = optimizer.muon_labels(specs)
  return {jax.tree_util.keystr(p) for p, label in jax.tree_util.tree_leaves_with_path(labels)
          if label == "muon"}


def test_muon_partition_of_a_real_model():
  model = config_lib.section(
      "model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32)
  expected = {f"[{i}]['{m}']['{w}']['w']" for i in (0, 1)
              for m, w in [("attn", "qkv"), ("attn", "out"), ("mlp", "fc"), ("mlp", "proj")]}
  assert _muon_paths(model) == {"['blocks']" + p for p in expected}


def test_muon_partition_of_a_scanned_gqa_swiglu_model():
  model = config_lib.section(
      "model", vocab_size=61, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32,
      num_kv_heads=2, mlp="swiglu", tie_embeddings=False, scan_layers=True,
      use_bias=True, qk_norm=True)
  _, params, specs = state_lib.model_graph(model)
  assert params["blocks"]["attn"]["kv"]["w"].ndim == 5 and "lm_head" in params
  assert _muon_paths(model) == {f"['blocks']['{m}']['{w}']['w']" for m, w in
                                [("attn", "q"), ("attn", "kv"), ("attn", "out"), ("mlp", "fc"),
                                 ("mlp", "proj")]}


def _singular_values(u, in_dims: int) -> np.ndarray:
  u = np.asarray(u)
  return np.linalg.svd(u.reshape(int(np.prod(u.shape[:in_dims])), -1), compute_uv=False)


def test_muon_orthogonalises_each_matrix_over_its_own_dims():
  cfg = _cfg("muon")
  zeros = jax.tree.map(jnp.zeros_like, _tree(0))  # no weight-decay term in the update
  (u,) = _updates(cfg, [_tree(1)], zeros)
  lr0 = cfg.muon_learning_rate / (cfg.warmup_steps + 1)
  # every matrix here has fan_out <= fan_in, so optax's width scaling is 1
  for name, matrix, in_dims in [("q", u["qkv"][:, 0], 1), ("v", u["qkv"][:, 2], 1),
                                ("out", u["out"], 2), ("proj", u["proj"], 1)]:
    s = _singular_values(matrix, in_dims) / lr0
    # Newton-Schulz leaves singular values near 1 (not exactly: quintic with steep slope)
    assert 0.5 < s.min() and s.max() < 1.5, (name, s)
  # q, k, v are three matrices: [Oq Ok Ov] has singular values ~sqrt(3), ~1 if joint
  joint = np.asarray(u["qkv"]).reshape(D, -1)
  assert _singular_values(joint, 1).min() / lr0 > 1.2


@pytest.mark.parametrize("name", NAMES)
def test_schedule_is_shared_by_every_param(name):
  # a constant gradient keeps each optimizer's update direction fixed (Adam: m/sqrt(v) = sign,
  # Lion: sign, Muon: the same orthogonalised matrix), so update size follows the lr alone
  cfg = _cfg(name)
  grads = _tree(1)
  ups = _updates(cfg, [grads] * 7)
  sched = optimizer.schedule(cfg, 8)
  lrs = np.array([sched(t) for t in range(7)])
  assert lrs[0] < lrs[3] and lrs[6] < lrs[3]  # warmup then decay
  for t in range(1, 7):  # per tensor: Newton-Schulz turns rounding into ~1e-5 element noise
    numerics.assert_trees_close(ups[t], jax.tree.map(lambda u: u * lrs[t] / lrs[0], ups[0]),
                                rtol=1e-4)
  # undecayed AdamW and Lion leaves move by lr(0) per element on the first step
  np.testing.assert_allclose(np.abs(ups[0]["scale"]), lrs[0], rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_matrices_only_same_shrink(name):
  cfg = _cfg(name)
  params = _tree(0)
  (u,) = _updates(cfg, [jax.tree.map(jnp.zeros_like, params)], params)
  lr0 = cfg.learning_rate / (cfg.warmup_steps + 1)
  for n in SHAPES:
    expected = -lr0 * cfg.weight_decay * params[n] if params[n].ndim >= 2 else 0 * params[n]
    np.testing.assert_allclose(u[n], expected, rtol=1e-5, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_clipping_applies_to_every_optimizer(name):
  g1, h = _tree(1, 0.01), _tree(2)
  norm = float(optax.tree.norm(h))
  huge = jax.tree.map(lambda x: 1e4 * x, h)
  clipped = jax.tree.map(lambda x: x / norm, h)  # what clipping to norm 1 leaves of `huge`

  def second(clip, g2):
    return _updates(_cfg(name, grad_clip_norm=clip), [g1, g2])[1]
  numerics.assert_trees_close(second(1.0, huge), second(1.0, clipped), rtol=1e-4)
  # without clipping the huge gradient dominates the moments: the check above can fail
  off, on = second(0.0, huge), second(0.0, clipped)
  assert any(not np.allclose(off[n], on[n], rtol=1e-3) for n in SHAPES)


@pytest.mark.parametrize("name,lr", [("adamw", 3e-2), ("lion", 3e-2), ("muon", 0.1)])
def test_each_optimizer_reduces_a_least_squares_loss(name, lr):
  x = jax.random.normal(jax.random.key(0), (64, F))
  y = x @ (jax.random.normal(jax.random.key(1), (F, D)) / np.sqrt(F))
  specs = {"proj": P("mlp", "embed"), "scale": P("embed")}
  params = {"proj": jnp.zeros((F, D)), "scale": jnp.ones((D,))}
  loss = lambda p: jnp.mean((x @ p["proj"] * p["scale"] - y) ** 2)
  tx = optimizer.build(_cfg(name, learning_rate=lr, muon_learning_rate=lr, warmup_steps=2,
                            decay_steps=0, grad_clip_norm=1.0), 30, specs)

  def step(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), None
  (trained, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, 30))(params)
  assert float(loss(trained)) < 0.1 * float(loss(params)), (loss(params), loss(trained))


def test_unknown_name_is_a_one_line_error():
  cfg = shakespeare_char_cpu.get_config()
  cfg.optimizer.name = "sgd"
  with pytest.raises(ValueError, match=r"optimizer\.name='sgd' is not one of \['adamw', "
                                       r"'lion', 'muon'\]"):
    config_lib.split(cfg)


def test_muon_needs_specs_with_a_hidden_matrix():
  with pytest.raises(ValueError, match="param_specs"):
    optimizer.build(_cfg("muon"), 8)
  conv_net = {"kernel": P(None, None, None, "mlp"), "head": P("mlp", None)}
  with pytest.raises(ValueError, match="no parameter has named input and output dims"):
    optimizer.build(_cfg("muon"), 8, conv_net)


def test_muon_state_takes_the_params_shardings():
  model = config_lib.section(
      "model", vocab_size=64, max_seq_len=16, num_layers=2, num_heads=4, embed_dim=32,
      scan_layers=True)
  mesh = mesh_lib.make_mesh((1, 8, 1), jax.devices()[:8])
  _, _, specs = state_lib.model_graph(model)
  tx = optimizer.build(_cfg("muon", grad_clip_norm=1.0), 8, specs)
  shardings = state_lib.shardings(model, tx, mesh, mesh_lib.rules("fsdp"))
  # the restore target: fails unless the shardings tree matches the state's (as create would)
  state = state_lib.abstract_state(model, tx, shardings)
  qkv, emb = state.params["blocks"]["attn"]["qkv"]["w"], state.params["token_embed"]
  assert qkv.ndim == 5 and qkv.sharding.shard_shape(qkv.shape) != qkv.shape  # really split
  leaves = {jax.tree_util.keystr(p): x
            for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)}
  qkv_moments = [k for k in leaves if k.endswith("['qkv']['w']")]
  emb_moments = [k for k in leaves if k.endswith("['token_embed']")]
  assert len(qkv_moments) == 1 and ".mu" in qkv_moments[0]  # Muon momentum only
  assert len(emb_moments) == 2  # AdamW mu and nu
  for k in qkv_moments:
    assert leaves[k].sharding.is_equivalent_to(qkv.sharding, 5), k
  for k in emb_moments:
    assert leaves[k].sharding.is_equivalent_to(emb.sharding, 2), k
  counters = [k for k, x in leaves.items() if x.ndim == 0]
  assert counters and all(leaves[k].sharding.is_fully_replicated for k in counters)
