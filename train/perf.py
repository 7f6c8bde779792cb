"""Model FLOPs per token, the peak-FLOPs table behind MFU, and the loop's throughput meter."""
import re
import time

import jax

from treadle.model import gpt

# Dense (no sparsity) peak FLOP/s per chip, by compute dtype: (pattern, FLOP/s), matched
# against the lowercased jax `device_kind`, most specific pattern first. The "cpu" entries
# are *measured* large-matmul throughput of this project's 2-core AVX-512 dev machine (not a
# vendor figure), so CPU MFU elsewhere is only indicative; experiments/bench/train_bench.py
# --peak_flops overrides the table. NVIDIA datasheets quote bf16 Tensor Core figures "with
# sparsity"; the dense figure is half of it.
PEAK_FLOPS = {
    "bfloat16": [
        (r"^cpu$", 370e9),
        # NVIDIA H100 datasheet: PCIe 1,513 TFLOPS with sparsity, NVL 1,671 (per GPU),
        # SXM 1,979 ("NVIDIA H100 80GB HBM3" is the SXM part).
        (r"h100.*pcie", 756e12),
        (r"h100.*nvl", 835e12),
        (r"h100", 989e12),
        # NVIDIA H200 datasheet: NVL 1,671 TFLOPS with sparsity, SXM 1,979.
        (r"h200.*nvl", 835e12),
        (r"h200", 989e12),
        # NVIDIA A100 datasheet: 312 TFLOPS dense bf16, PCIe and SXM alike.
        (r"a100", 312e12),
        # NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity. \b keeps "L40S" out.
        (r"\bl4\b", 121e12),
        # Google Cloud TPU system architecture pages, bf16 per chip: v4 275 TFLOPS, v5e 197,
        # v5p 459, v6e (Trillium) 918. JAX names v5e "TPU v5 lite", v6e "TPU v6 lite".
        (r"tpu v5 ?lite|tpu v5e", 197e12),
        (r"tpu v5p|tpu v5$", 459e12),
        (r"tpu v6 ?lite|tpu v6e", 918e12),
        (r"tpu v4$", 275e12),
    ],
    "float32": [
        (r"^cpu$", 159e9),
        (r"h100", 67e12),   # NVIDIA H100 SXM datasheet, FP32 (not TF32)
        (r"a100", 19.5e12),  # NVIDIA A100 datasheet, FP32
    ],
}


def _mlp_params(cfg: gpt.ModelConfig, hidden: int) -> int:
  return (3 if cfg.mlp == "swiglu" else 2) * cfg.embed_dim * hidden


def _layer_matmul_params(cfg: gpt.ModelConfig, index: int = 0, active: bool = False) -> int:
  """Matmul parameters of block `index`; active: those one token uses (its top-k experts)."""
  D, H, G, K = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim
  attention = D * H * K + 2 * D * G * K + H * K * D  # q, k and v, out
  if not cfg.is_moe_block(index):
    return attention + _mlp_params(cfg, cfg.hidden_dim)
  experts = cfg.experts_per_token if active else cfg.num_experts
  shared = _mlp_params(cfg, cfg.num_shared_experts * cfg.expert_hidden_dim)
  router = D * cfg.num_experts + (D if cfg.num_shared_experts and cfg.shared_expert_gate else 0)
  return attention + experts * _mlp_params(cfg, cfg.expert_hidden_dim) + shared + router


def _matmul_params(cfg: gpt.ModelConfig, active: bool = False) -> int:
  return sum(_layer_matmul_params(cfg, i, active) for i in range(cfg.num_layers))


def num_params(cfg: gpt.ModelConfig, include_embeddings: bool = True,
               active: bool = False) -> int:
  """Parameters of the decoder without LoRA adapters (norm scales and biases included);
  active: only the experts a token is routed to count (MoE)."""
  D, L = cfg.embed_dim, cfg.num_layers
  norms = 2 * D * (2 if cfg.use_bias and cfg.norm == "layernorm" else 1)
  biases = 0
  if cfg.use_bias:
    biases = cfg.num_heads * cfg.head_dim + 2 * cfg.kv_heads * cfg.head_dim + D
    biases += (2 if cfg.mlp == "swiglu" else 1) * cfg.hidden_dim + D  # (MoE: experts have none)
  elif cfg.qkv_bias:
    biases = cfg.num_heads * cfg.head_dim + 2 * cfg.kv_heads * cfg.head_dim
  qk_norms = 2 * cfg.head_dim if cfg.qk_norm else 0
  total = _matmul_params(cfg, active) + L * (norms + biases + qk_norms) + norms // 2
  if include_embeddings:
    total += cfg.padded_vocab_size * D
    total += cfg.max_seq_len * D if cfg.position == "learned" else 0
  if not cfg.tie_embeddings:
    total += D * cfg.padded_vocab_size
  return total


def flops_per_token(cfg: gpt.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 x (matmul params a token uses, incl. the output layer; MoE:
  its top-k experts) + attention."""
  matmul_params = _matmul_params(cfg, active=True) + cfg.padded_vocab_size * cfg.embed_dim
  # QK^T and PV: 2 matmuls x 2 FLOPs x T x (H x K) per token forward, x3 for forward+backward
  attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  return 6 * matmul_params + attention


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The table's peak for this device kind ("cpu" for any CPU) and dtype, else None."""
  kind = device_kind.lower().strip()
  return next((peak for pattern, peak in PEAK_FLOPS.get(dtype, ()) if re.search(pattern, kind)),
              None)


class Throughput:
  """Units (tokens, pairs, ...) per second and MFU over the steps since the last reset, by
  the host's wall clock."""

  def __init__(self, units_per_step: int, unit: str, flops_per_unit: float, dtype: str):
    self.units_per_step, self.unit, self.flops_per_unit = units_per_step, unit, flops_per_unit
    device = jax.devices()[0]
    peak = peak_flops(device.device_kind if device.platform != "cpu" else "cpu", dtype)
    # simulated CPU devices share one host's cores: the host peak is the whole budget
    scale = jax.process_count() if device.platform == "cpu" else jax.device_count()
    self.peak = peak * scale if peak else None
    self.reset(0)

  def reset(self, step: int) -> None:
    self.step, self.time = step, time.perf_counter()

  def measure(self, step: int) -> dict:
    now = time.perf_counter()
    rate = (step - self.step) * self.units_per_step / max(now - self.time, 1e-9)
    self.reset(step)
    out = {f"{self.unit}_per_second": rate}
    if self.peak:
      out["mfu"] = rate * self.flops_per_unit / self.peak
    return out
