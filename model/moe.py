"""Mixture-of-experts feed-forward: a router sends each token to its top-k experts.

Routing (router logits, top-k, capacity, statistics and the auxiliary losses) is computed on
the whole batch, so its statistics and drops are those of the global batch however the batch
is sharded. The experts' work is a grouped matmul over the (token, expert) assignments sorted
by expert, per device: under a mesh (train/ sets one) a `shard_map` keeps each device's tokens
local; with experts split over the `expert` mesh axis, each device gathers the tokens of its
expert-parallel group, computes its own experts' share and reduce-scatters the outputs back.

The grouped matmul: on GPU/TPU `jax.lax.ragged_dot` (a real grouped GEMM there); on CPU, where
XLA lowers ragged_dot to a masked matmul over every expert (E times the work: 58 vs 12 ms
forward+backward for 8 experts, 768 tokens, D 128, F 256 on the 2-core Zen 3), the assignments
are laid out in blocks of equal size, each block one expert's, and multiplied by a batched
matmul with each block's expert weight.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from treadle.model import axes
from treadle.model import layers
from treadle.model import quant


class Routing(NamedTuple):
  """The top-k choice of every token (flattened batch), after the capacity rule."""
  expert_NK: jax.Array   # int32 expert of each choice; -1 where capacity dropped it
  weight_NK: jax.Array   # float32 combine weight (0 where dropped)


class ExpertLora(nnx.Module):
  """Per-expert LoRA of an expert weight [E, in, out...]: a [E, in, r], b [E, r, out...]."""

  def __init__(self, cfg, shape, names, rngs: nnx.Rngs):
    E, fan_in, out = shape[0], shape[1], tuple(shape[2:])
    self.scale = cfg.lora_alpha / cfg.lora_rank
    self.a = axes.param(nnx.initializers.normal(1.0 / math.sqrt(fan_in)), rngs.params(),
                        (E, fan_in, cfg.lora_rank), (names[0], names[1], None))
    self.b = axes.param(nnx.initializers.zeros, rngs.params(), (E, cfg.lora_rank, *out),
                        (names[0], None, *names[2:]))

  def delta(self) -> jax.Array:
    return self.scale * jnp.einsum("eir,er...->ei...", self.a[...], self.b[...])


class ExpertWeight(nnx.Module):
  """One matrix per expert, [E, in, out...], with an optional per-expert LoRA adapter."""

  def __init__(self, cfg, name: str, shape, names, std: float, rngs: nnx.Rngs):
    self.w = axes.param(nnx.initializers.normal(std * cfg.hidden_init_scale), rngs.params(),
                        shape, names)  # a hidden matrix per expert (mup: variance / m)
    self.lora = ExpertLora(cfg, shape, names, rngs) if name in cfg.lora_weights else None

  def value(self, dtype) -> jax.Array:
    """The weight the experts use (with the adapter's low-rank update added)."""
    w = quant.value(self.w)
    if isinstance(w, quant.QWeight):  # int8: the dispatch paths gather whole expert weights
      w = w.dequantize(jnp.float32 if self.lora is not None else dtype)
    if self.lora is not None:
      w = w + self.lora.delta()
    return w.astype(dtype)


class MoeMlp(nnx.Module):
  """Router + E experts (the model's MLP kind) + optional shared expert(s)."""

  def __init__(self, cfg, rngs: nnx.Rngs):
    E, D, F = cfg.num_experts, cfg.embed_dim, cfg.expert_hidden_dim
    self.cfg = cfg
    self.router = axes.param(nnx.initializers.normal(0.02), rngs.params(), (D, E),
                             (axes.EMBED, None))
    if cfg.mlp == "swiglu":  # gate and up fused, as the dense SwiGLU
      fc_shape, fc_names = (E, D, 2, F), (axes.EXPERT, axes.EMBED, None, axes.MLP)
    else:
      fc_shape, fc_names = (E, D, F), (axes.EXPERT, axes.EMBED, axes.MLP)
    self.fc = ExpertWeight(cfg, "fc", fc_shape, fc_names, 0.02, rngs)
    self.proj = ExpertWeight(cfg, "proj", (E, F, D), (axes.EXPERT, axes.MLP, axes.EMBED),
                             0.02 / math.sqrt(2 * cfg.num_layers), rngs)
    shared_hidden = cfg.num_shared_experts * F
    self.shared = layers.Mlp(cfg, rngs, hidden=shared_hidden) if shared_hidden else None
    self.shared_gate = (axes.param(nnx.initializers.normal(0.02), rngs.params(), (D, 1),
                                   (axes.EMBED, None))
                        if shared_hidden and cfg.shared_expert_gate else None)

  def __call__(self, x_BTD: jax.Array, dropless: bool = False) -> tuple[jax.Array, dict]:
    """(output, router statistics). dropless: ignore capacity_factor (cached decoding, where
    a token's output must not depend on the other rows of the batch)."""
    cfg = self.cfg
    B, T, D = x_BTD.shape
    x_ND = x_BTD.reshape(B * T, D)
    logits_NE = jnp.dot(x_ND.astype(jnp.float32), self.router[...],
                        preferred_element_type=jnp.float32)
    routing, stats = route(logits_NE, cfg.experts_per_token, cfg.router_norm_topk,
                           0.0 if dropless else cfg.capacity_factor)
    y_ND = experts(x_ND, routing, self.fc.value(cfg.dtype), self.proj.value(cfg.dtype), cfg.mlp)
    y_BTD = y_ND.reshape(B, T, D).astype(x_BTD.dtype)
    if self.shared is not None:
      shared_BTD = self.shared(x_BTD)
      if self.shared_gate is not None:
        gate = jax.nn.sigmoid(jnp.dot(x_BTD.astype(jnp.float32), self.shared_gate[...]))
        shared_BTD = (gate * shared_BTD.astype(jnp.float32)).astype(x_BTD.dtype)
      y_BTD = y_BTD + shared_BTD
    return y_BTD, stats


def capacity(num_tokens: int, k: int, num_experts: int, factor: float) -> int:
  """Assignments an expert takes: ceil(factor * tokens * k / experts)."""
  return math.ceil(factor * num_tokens * k / num_experts)


def route(logits_NE: jax.Array, k: int, norm_topk: bool, capacity_factor: float
          ) -> tuple[Routing, dict]:
  """Top-k routing of N tokens and its statistics (over all N: the global batch).

  Weights are the softmax probabilities of the chosen experts (renormalised to sum 1 with
  norm_topk, as Mixtral). With capacity_factor > 0 an expert takes at most `capacity(...)`
  assignments: first choices before second choices, earlier tokens first; the rest are
  dropped (the token keeps its other experts and the residual).
  """
  N, E = logits_NE.shape
  probs_NE = jax.nn.softmax(logits_NE, axis=-1)
  weight_NK, expert_NK = jax.lax.top_k(probs_NE, k)
  if norm_topk:
    weight_NK = weight_NK / weight_NK.sum(-1, keepdims=True)
  counts_E = jnp.zeros((E,), jnp.float32).at[expert_NK.reshape(-1)].add(1.0)
  keep_NK = jnp.ones_like(expert_NK, bool)
  if capacity_factor > 0:
    keep_NK = _within_capacity(expert_NK, E, capacity(N, k, E, capacity_factor))
  # Mixtral's (Hugging Face's) load-balancing loss: E * sum_e (share of tokens choosing e)
  # * (mean router probability of e); k at perfect balance
  aux = E * jnp.sum(counts_E / N * probs_NE.mean(0))
  z = jnp.mean(jnp.square(jax.nn.logsumexp(logits_NE, axis=-1)))  # ST-MoE router z-loss
  stats = {"aux_loss": aux, "z_loss": z, "load_E": counts_E / (N * k),
           "dropped": 1.0 - keep_NK.mean(dtype=jnp.float32)}
  routing = Routing(jnp.where(keep_NK, expert_NK, -1).astype(jnp.int32),
                    jnp.where(keep_NK, weight_NK, 0.0))
  return routing, stats


def _within_capacity(expert_NK: jax.Array, num_experts: int, cap: int) -> jax.Array:
  """True for the assignments an expert of capacity `cap` takes, in (choice, token) order."""
  flat = expert_NK.T.reshape(-1)  # choice-major: every first choice before any second
  order = jnp.argsort(flat, stable=True)
  counts = jnp.zeros((num_experts,), jnp.int32).at[flat].add(1)
  starts = jnp.cumsum(counts) - counts
  rank = jnp.zeros_like(flat).at[order].set(jnp.arange(flat.size) - starts[flat[order]])
  return (rank < cap).reshape(expert_NK.shape[::-1]).T


def experts(x_ND, routing: Routing, fc, proj, kind: str, dispatch: str = "collectives"
            ) -> jax.Array:
  """sum_k weight * expert_k(x) per token; sharded per the active mesh and rules.

  dispatch "collectives": per device (shard_map), all-gather over the expert-parallel group,
  reduce-scatter back (what the model uses); "xla": the global computation, its gathers and
  scatters partitioned by XLA from the shardings (for experiments/moe/bench_dispatch.py).
  """
  mesh, rules = axes.active()
  if mesh is None or dispatch == "xla":
    return _local_experts(x_ND, routing, fc, proj, kind, 0, None)
  batch_axes = _mesh_axes(rules.get(axes.BATCH), mesh)
  if x_ND.shape[0] % math.prod(mesh.shape[a] for a in batch_axes):
    return _local_experts(x_ND, routing, fc, proj, kind, 0, None)  # a tiny decode batch
  expert_axes = _mesh_axes(rules.get(axes.EXPERT), mesh)
  hidden_axes = tuple(a for a in _mesh_axes(rules.get(axes.MLP), mesh)
                      if a not in batch_axes + expert_axes)
  P = jax.sharding.PartitionSpec
  tokens = P(batch_axes or None)
  e_spec = expert_axes or None
  h_spec = hidden_axes or None
  fc_spec = P(e_spec, None, None, h_spec) if fc.ndim == 4 else P(e_spec, None, h_spec)
  proj_spec = P(e_spec, h_spec, None)
  group = tuple(a for a in batch_axes if a in expert_axes)

  def per_device(x_nD, expert_nK, weight_nK, fc_l, proj_l):
    if group:  # the tokens of this expert-parallel group, for this device's experts
      x_nD, expert_nK, weight_nK = (jax.lax.all_gather(v, group, tiled=True)
                                    for v in (x_nD, expert_nK, weight_nK))
    offset = _axis_index(expert_axes, mesh) * fc_l.shape[0]
    y = _local_experts(x_nD, Routing(expert_nK, weight_nK), fc_l, proj_l, kind, offset, None)
    if hidden_axes:  # each device multiplied its slice of the hidden units
      y = jax.lax.psum(y, hidden_axes)
    if group:
      y = jax.lax.psum_scatter(y, group, tiled=True)
    return y

  return jax.shard_map(per_device, mesh=mesh,
                       in_specs=(tokens, tokens, tokens, fc_spec, proj_spec),
                       out_specs=tokens, check_vma=False)(
                           x_ND, routing.expert_NK, routing.weight_NK, fc, proj)


def _mesh_axes(target, mesh) -> tuple[str, ...]:
  names = (target,) if isinstance(target, str) else tuple(target or ())
  return tuple(a for a in names if a in mesh.shape and mesh.shape[a] > 1)


def _axis_index(names: tuple[str, ...], mesh) -> jax.Array:
  index = jnp.int32(0)
  for a in names:
    index = index * mesh.shape[a] + jax.lax.axis_index(a)
  return index


def _local_experts(x_ND, routing: Routing, fc, proj, kind, offset, impl) -> jax.Array:
  """The experts [offset, offset + E_local) held here, applied to their assignments."""
  N, K = routing.expert_NK.shape
  E = fc.shape[0]
  local_A = routing.expert_NK.reshape(-1) - offset
  valid_A = (routing.expert_NK.reshape(-1) >= 0) & (local_A >= 0) & (local_A < E)
  group_A = jnp.where(valid_A, local_A, E)  # everything not ours sorts after our experts
  token_A = jnp.arange(N * K) // K
  impl = impl or ("blocked" if jax.default_backend() == "cpu" else "ragged")
  out_AD = (_ragged_ffn if impl == "ragged" else _blocked_ffn)(x_ND, token_A, group_A, fc,
                                                              proj, kind)
  weight_A = jnp.where(valid_A, routing.weight_NK.reshape(-1), 0.0)
  y = out_AD.astype(jnp.float32) * weight_A[:, None]
  return y.reshape(N, K, -1).sum(1).astype(x_ND.dtype)


def _activation(h, kind: str):
  if kind == "swiglu":
    return jax.nn.silu(h[..., 0, :]) * h[..., 1, :]
  return jax.nn.gelu(h, approximate=True)


def _ragged_ffn(x_ND, token_A, group_A, fc, proj, kind) -> jax.Array:
  """Per-assignment expert outputs [A, D] (0 for groups >= E) with jax.lax.ragged_dot."""
  E = fc.shape[0]
  order = jnp.argsort(group_A, stable=True)
  sizes = jnp.zeros((E + 1,), jnp.int32).at[group_A].add(1)[:E]
  xs = x_ND[token_A[order]]
  h = jax.lax.ragged_dot(xs, fc.reshape(E, fc.shape[1], -1), sizes)
  h = _activation(h.reshape(h.shape[0], *fc.shape[2:]), kind)
  out = jax.lax.ragged_dot(h, proj, sizes)
  return jnp.zeros_like(out).at[order].set(out)


def block_size(num_assignments: int, num_experts: int) -> int:
  """Rows per block: a power of two near half an expert's mean share, in [8, 128]."""
  mean_half = max(num_assignments // (2 * num_experts), 1)
  return int(min(max(2 ** int(math.log2(mean_half)), 8), 128))


def _blocked_ffn(x_ND, token_A, group_A, fc, proj, kind) -> jax.Array:
  """Per-assignment expert outputs [A, D] (0 for groups >= E): each expert's assignments
  padded to whole blocks of b rows, every block multiplied by its expert's weights.

  At most A + min(E, A) (b - 1) rows: the padding is under b rows per expert. Ranks within
  an expert come from a cumulative sum over a one-hot [A, E] (CPU-only path, where it beat
  argsort: 12.7 vs 14.4 ms forward+backward at the size in the module docstring).
  """
  E, A = fc.shape[0], group_A.shape[0]
  b = block_size(A, E)
  num_blocks = -(-(A + min(E, A) * (b - 1)) // b)
  R = num_blocks * b
  one_hot_AE = (group_A[:, None] == jnp.arange(E)[None]).astype(jnp.int32)  # group E: no 1
  sizes = one_hot_AE.sum(0)
  rank_A = (jnp.cumsum(one_hot_AE, 0) * one_hot_AE).sum(1) - 1
  padded = -(-sizes // b) * b
  padded_end = jnp.cumsum(padded)
  group = jnp.minimum(group_A, E - 1)
  row_A = jnp.where(group_A < E, padded_end[group] - padded[group] + rank_A, R)  # R: none
  source_R = jnp.full((R,), -1, jnp.int32).at[row_A].set(jnp.arange(A, dtype=jnp.int32),
                                                        mode="drop")
  rows_RD = jnp.where((source_R >= 0)[:, None], x_ND[token_A[jnp.maximum(source_R, 0)]], 0)
  block_expert = jnp.minimum(jnp.searchsorted(padded_end, jnp.arange(num_blocks) * b,
                                              side="right"), E - 1)
  rows = rows_RD.reshape(num_blocks, b, -1)
  h = _activation(jnp.einsum("nbd,nd...->nb...", rows, fc[block_expert]), kind)
  out_RD = jnp.einsum("nbf,nfd->nbd", h, proj[block_expert]).reshape(R, -1)
  return jnp.where((row_A < R)[:, None], out_RD[jnp.minimum(row_A, R - 1)], 0)


def router_losses(cfg, stats: dict | None) -> jax.Array:
  """The router terms a training loss adds: coefficients x the mean over MoE blocks.

  cfg is the decoder's gpt.ModelConfig (not imported: gpt imports this module); stats is
  what Decoder returns beside the logits, None for a dense model.
  """
  if stats is None:
    return jnp.float32(0.0)
  return (cfg.router_aux_loss_coef * stats["aux_loss"].mean()
          + cfg.router_z_loss_coef * stats["z_loss"].mean())


def metrics(cfg, stats: dict | None) -> dict[str, jax.Array]:
  """Scalars to log: the router losses (mean over MoE blocks), the share of assignments
  dropped by capacity, and each MoE block's load (share of its assignments) per expert,
  as expert_load/layer{block index}/e{expert}."""
  if stats is None:
    return {}
  out = {"moe_aux_loss": stats["aux_loss"].mean(), "moe_z_loss": stats["z_loss"].mean(),
         "moe_dropped": stats["dropped"].mean()}
  moe_blocks = [i for i in range(cfg.num_layers) if cfg.is_moe_block(i)]
  for block, load_E in zip(moe_blocks, stats["load_E"]):
    out.update({f"expert_load/layer{block}/e{e}": load_E[e] for e in range(load_E.shape[0])})
  return out


def with_router_losses(cfg, loss: jax.Array, task_metrics: dict, stats: dict | None,
                       training: bool, objective_name: str) -> tuple[jax.Array, dict]:
  """A task's (loss, metrics) for an MoE model: training adds the router losses to the loss
  and logs the task's own objective as `objective_name`; evaluation keeps the objective.
  Both log the router metrics. A dense model's (stats None) pass through unchanged."""
  if stats is None:
    return loss, task_metrics
  out = {**task_metrics, **metrics(cfg, stats)}
  if not training:
    return loss, out
  return loss + router_losses(cfg, stats), {objective_name: loss, **out}
