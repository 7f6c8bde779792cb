"""The post-training losses against hand computations: SFT's mask and token-weighted
accumulation, DPO's loss, GRPO's advantages and clipped objective; each task's update sharded
equals single device; an MoE policy trains on its objective + its router losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import numerics
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib
from treadle.train import optimizer
from treadle.train import state as state_lib
from treadle.train import step as step_lib
from treadle.train.tasks import dpo
from treadle.train.tasks import grpo
from treadle.train.tasks import sft

MODEL = config_lib.section("model", vocab_size=24, max_seq_len=16, num_layers=2, num_heads=2,
                           embed_dim=16)
T = 12


def _params():
  graphdef, _, _ = state_lib.model_graph(MODEL)
  return graphdef, state_lib.random_params(MODEL, 0)


def _sft_batch(answer_lengths, seed=0) -> dict:
  """Rows whose last `n` target positions are answer tokens (the rest is prompt)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, MODEL.vocab_size, (len(answer_lengths), T + 1), dtype=np.int32)
  mask = np.zeros((len(answer_lengths), T), np.int32)
  for row, n in enumerate(answer_lengths):
    mask[row, T - n:] = 1
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


def _grads(task, batch, accum_steps=1):
  graphdef, params = _params()
  with jax.default_matmul_precision("highest"):
    (loss, _), grads = step_lib._accumulated_grads(task, graphdef, params, batch,
                                                   jax.random.key(0), accum_steps, False)
  return float(loss), grads


def test_prompt_tokens_carry_no_gradient():
  batch = _sft_batch([3, 5])
  changed = dict(batch, targets=np.where(batch["loss_mask"] == 0, 0, batch["targets"]))
  assert not np.array_equal(changed["targets"], batch["targets"])
  loss, grads = _grads(sft.SupervisedFineTuning(), batch)
  loss_changed, grads_changed = _grads(sft.SupervisedFineTuning(), changed)
  assert loss == loss_changed
  numerics.assert_trees_close(grads_changed, grads, rtol=0)
  assert np.linalg.norm(grads["blocks"][0]["attn"]["qkv"]["w"]) > 0  # the answers do train


def test_accumulation_equals_one_batch_when_answers_differ_in_length():
  # micro-batch a takes rows a, a+2: micro-batch 0 holds 2 answer tokens, micro-batch 1 holds 22
  batch = _sft_batch([1, 11, 1, 11])
  task = sft.SupervisedFineTuning()
  loss_one, grads_one = _grads(task, batch, accum_steps=1)
  loss_two, grads_two = _grads(task, batch, accum_steps=2)
  assert abs(loss_two - loss_one) < 1e-6 * abs(loss_one)
  numerics.assert_trees_close(grads_two, grads_one, rtol=1e-5)
  # what each micro-batch's own mean, averaged, gives instead (the old rule): far off
  halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
  naive = [_grads(task, h) for h in halves]
  naive_loss = (naive[0][0] + naive[1][0]) / 2
  assert abs(naive_loss - loss_one) > 1e-3 * abs(loss_one)


def _pairs(seed=0, n=3) -> dict:
  rng = np.random.default_rng(seed)
  batch = {}
  for side in dpo.SIDES:
    tokens = rng.integers(0, MODEL.vocab_size, (n, T + 1), dtype=np.int32)
    mask = (np.arange(T)[None, :] >= rng.integers(2, 8, (n, 1))).astype(np.int32)
    batch.update({f"{side}_inputs": tokens[:, :-1], f"{side}_targets": tokens[:, 1:],
                  f"{side}_mask": mask})
  batch["ref_chosen"] = rng.normal(-20, 2, n).astype(np.float32)
  batch["ref_rejected"] = rng.normal(-20, 2, n).astype(np.float32)
  return batch


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_dpo_loss_matches_a_hand_computation():
  graphdef, params = _params()
  model = nnx.merge(graphdef, params)
  batch = _pairs()
  task = dpo.PreferenceOptimization()
  task.beta = 0.3
  with jax.default_matmul_precision("highest"):
    loss, aux = task.loss(model, batch, None)
    logp = {}
    for side in dpo.SIDES:
      logits, _ = model(batch[f"{side}_inputs"])
      per_token = np.take_along_axis(_log_softmax(np.asarray(logits, np.float64)),
                                     batch[f"{side}_targets"][..., None], -1)[..., 0]
      logp[side] = (per_token * batch[f"{side}_mask"]).sum(-1)
  z = 0.3 * ((logp["chosen"] - batch["ref_chosen"]) - (logp["rejected"] - batch["ref_rejected"]))
  expected = np.mean(np.log1p(np.exp(-z)))  # -log sigmoid(z)
  assert abs(float(loss) - expected) < 1e-5 * max(1.0, abs(expected))
  assert abs(float(aux["reward_margin"]) - z.mean()) < 1e-4 * max(1.0, abs(z.mean()))
  assert float(aux["reward_accuracy"]) == pytest.approx(np.mean(z > 0))
  assert 0 < np.mean(z > 0) < 1  # both outcomes present: the accuracy is tested


def test_group_advantages_are_normalised_within_each_group():
  rewards = np.array([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.0, 2.0, 4.0, 6.0])
  adv = grpo.group_advantages(rewards, 4)
  np.testing.assert_allclose(adv[:4], np.array([0.5, -0.5, -0.5, 0.5]) / (0.5 + 1e-4),
                             rtol=1e-6)
  np.testing.assert_allclose(adv[4:8], 0.0)  # a group that all scored the same teaches nothing
  std = np.std([0.0, 2.0, 4.0, 6.0])
  np.testing.assert_allclose(adv[8:], (np.array([0, 2, 4, 6]) - 3.0) / (std + 1e-4), rtol=1e-6)


def test_grpo_objective_matches_a_hand_computation():
  logp = np.log(np.array([[0.5, 0.2, 0.4], [0.3, 0.6, 0.1]]))
  old = np.log(np.array([[0.5, 0.1, 0.8], [0.2, 0.6, 0.3]]))  # ratios 1, 2, .5 / 1.5, 1, 1/3
  ref = np.log(np.array([[0.4, 0.2, 0.4], [0.3, 0.5, 0.2]]))
  adv = np.array([1.0, -2.0])
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  loss, aux = grpo.grpo_objective(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref),
                                  jnp.asarray(adv), jnp.asarray(mask), 0.2, 0.05)
  ratio = np.exp(logp - old)
  by_hand = np.zeros_like(ratio)
  clipped_hand = np.zeros_like(ratio)
  kl_hand = np.zeros_like(ratio)
  for b in range(2):
    for t in range(3):
      r, a = ratio[b, t], adv[b]
      by_hand[b, t] = -min(r * a, min(max(r, 0.8), 1.2) * a)
      clipped_hand[b, t] = r < 0.8 or r > 1.2
      d = ref[b, t] - logp[b, t]
      kl_hand[b, t] = np.exp(d) - d - 1
  n = mask.sum()
  assert float(loss) == pytest.approx(((by_hand + 0.05 * kl_hand) * mask).sum() / n, rel=1e-5)
  assert float(aux["clip_fraction"]) == pytest.approx((clipped_hand * mask).sum() / n)
  assert float(aux["kl"]) == pytest.approx((kl_hand * mask).sum() / n, rel=1e-5)
  assert float(aux["weight"]) == n
  # tokens whose ratio left the clip range in the advantage's direction get no gradient
  grad = jax.grad(lambda lp: grpo.grpo_objective(lp, jnp.asarray(old), jnp.asarray(old),
                                                 jnp.asarray(adv), jnp.asarray(mask), 0.2,
                                                 0.0)[0])(jnp.asarray(logp))
  assert float(grad[0, 1]) == 0.0  # ratio 2 > 1.2 with a positive advantage: clipped
  # out of range the other way (the pessimistic bound keeps them): still pushed back
  assert float(grad[0, 2]) != 0.0 and float(grad[1, 0]) != 0.0  # .5 with A > 0, 1.5 with A < 0
  assert float(grad[0, 0]) != 0.0 and float(grad[1, 1]) != 0.0
  assert float(grad[1, 2]) == 0.0  # masked out


def _grpo_batch(seed=0, n=4) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, MODEL.vocab_size, (n, T + 1), dtype=np.int32)
  pad = np.array([0, 2, 1, 0][:n], np.int32)
  lengths = np.array([3, 5, 1, 4][:n], np.int32)
  return grpo.training_batch(tokens, pad, 6, lengths, rng.normal(size=n).astype(np.float32))


def _grpo_task():
  task = grpo.GroupRelativePolicyOptimization()
  task.rl = config_lib.section("rl", "grpo", clip_eps=0.2, kl_coef=0.1)
  return task


def _task_batches():
  dpo_task = dpo.PreferenceOptimization()
  dpo_task.beta = 0.1
  grpo_batch = {k: np.concatenate([v, v[::-1]]) for k, v in _grpo_batch().items()}
  grpo_batch["ref_logp"] = np.full(grpo_batch["targets"].shape, -3.0, np.float32)
  return {"sft": (sft.SupervisedFineTuning(), _sft_batch([1, 4, 2, 9, 3, 3, 7, 5])),
          "dpo": (dpo_task, {k: np.concatenate([v, v[::-1]]) for k, v in _pairs(n=4).items()}),
          "grpo": (_grpo_task(), grpo_batch)}


def _one_update(task, batch, shape, rules_name, devices):
  mesh = mesh_lib.make_mesh(shape, devices)
  rules = mesh_lib.rules(rules_name)
  opt = config_lib.section("optimizer", warmup_steps=1)
  tx = optimizer.build(opt, 10)
  shardings = state_lib.shardings(MODEL, tx, mesh, rules)
  state = state_lib.create(MODEL, tx, 0, shardings)
  graphdef, _, _ = state_lib.model_graph(MODEL)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  train, _ = step_lib.compile_steps(task, graphdef, tx, optimizer.schedule(opt, 10), 2, False,
                                    rules, shardings, batch_sharding)
  with jax.default_matmul_precision("highest"):
    state, metrics = train(state, {k: jax.device_put(v, batch_sharding) for k, v in batch.items()})
  return float(metrics["train_loss"]), jax.device_get(state.params)


@pytest.mark.devices(8)
@pytest.mark.parametrize("name", ["sft", "dpo", "grpo"])
def test_each_tasks_update_sharded_fsdp_tp_equals_single_device(name):
  task, batch = _task_batches()[name]
  loss, params = _one_update(task, batch, (1, 1, 1), "dp", jax.devices()[:1])
  sharded_loss, sharded_params = _one_update(task, batch, (2, 2, 2), "fsdp_tp", jax.devices())
  assert sharded_loss == pytest.approx(loss, rel=1e-5) and loss != 0
  numerics.assert_trees_close(sharded_params, params, rtol=1e-5)


MOE_MODEL = config_lib.section("model", vocab_size=24, max_seq_len=16, num_layers=2, num_heads=2,
                               embed_dim=16, num_experts=4, experts_per_token=2,
                               moe_hidden_dim=16, router_z_loss_coef=0.02)


def _router_inputs(name, batch):
  """The tokens (and positions, segments) each task's policy forward reads."""
  if name == "dpo":
    return {"tokens_BT": np.concatenate([batch[f"{s}_inputs"] for s in dpo.SIDES])}
  return {"tokens_BT": batch["inputs"], "positions_BT": batch.get("positions"),
          "segment_ids_BT": batch.get("segment_ids")}


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo"])
def test_an_moe_policy_trains_on_its_objective_plus_the_router_losses(name):
  task, batch = _task_batches()[name]
  graphdef, _, _ = state_lib.model_graph(MOE_MODEL)
  model = nnx.merge(graphdef, state_lib.random_params(MOE_MODEL, 0))
  with jax.default_matmul_precision("highest"):
    train_loss, train_aux = task.loss(model, batch, None, training=True)
    eval_loss, eval_aux = task.loss(model, batch, None, training=False)
    _, _, stats = model.forward(**_router_inputs(name, batch))
  aux, z = float(stats["aux_loss"].mean()), float(stats["z_loss"].mean())
  assert aux > 0 and z > 0
  expected = float(eval_loss) + 0.01 * aux + 0.02 * z  # router_aux_loss_coef's default: 0.01
  assert float(train_loss) == pytest.approx(expected, rel=1e-6)
  assert float(train_aux["objective"]) == pytest.approx(float(eval_loss), rel=1e-6)
  for metrics in (train_aux, eval_aux):
    assert float(metrics["moe_aux_loss"]) == pytest.approx(aux, rel=1e-6)
    assert "expert_load/layer1/e3" in metrics
  assert "objective" not in eval_aux
