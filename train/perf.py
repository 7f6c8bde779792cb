"""Model FLOPs per token and the peak-FLOPs table behind MFU."""
from treadle.model import gpt

# Dense peak FLOP/s per device. "cpu" entries are *measured* large-matmul throughput of
# this project's 2-core AVX-512 dev machine (not a vendor figure), so CPU MFU elsewhere is
# only indicative; experiments/bench/train_bench.py --peak_flops overrides the table.
PEAK_FLOPS = {
    ("cpu", "float32"): 159e9,
    ("cpu", "bfloat16"): 370e9,
    ("h100", "bfloat16"): 989e12,
    ("h100", "float32"): 67e12,
    ("a100", "bfloat16"): 312e12,
    ("a100", "float32"): 19.5e12,
    ("h200", "bfloat16"): 989e12,
    ("tpu v4", "bfloat16"): 275e12,
    ("tpu v5e", "bfloat16"): 197e12,
    ("tpu v5p", "bfloat16"): 459e12,
}


def _layer_matmul_params(cfg: gpt.ModelConfig) -> int:
  D, H, G, K, F = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.hidden_dim
  attention = D * H * K + 2 * D * G * K + H * K * D  # q, k and v, out
  mlp = (3 if cfg.mlp == "swiglu" else 2) * D * F
  return attention + mlp


def num_params(cfg: gpt.ModelConfig, include_embeddings: bool = True) -> int:
  """Parameters of the decoder without LoRA adapters (norm scales and biases included)."""
  D, L = cfg.embed_dim, cfg.num_layers
  norms = 2 * D * (2 if cfg.use_bias and cfg.norm == "layernorm" else 1)
  biases = 0
  if cfg.use_bias:
    biases = cfg.num_heads * cfg.head_dim + 2 * cfg.kv_heads * cfg.head_dim + D
    biases += (2 if cfg.mlp == "swiglu" else 1) * cfg.hidden_dim + D
  qk_norms = 2 * cfg.head_dim if cfg.qk_norm else 0
  total = L * (_layer_matmul_params(cfg) + norms + biases + qk_norms) + norms // 2
  if include_embeddings:
    total += cfg.padded_vocab_size * D
    total += cfg.max_seq_len * D if cfg.position == "learned" else 0
  if not cfg.tie_embeddings:
    total += D * cfg.padded_vocab_size
  return total


def flops_per_token(cfg: gpt.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 x (matmul params incl. the output layer) + attention."""
  matmul_params = cfg.num_layers * _layer_matmul_params(cfg) + cfg.padded_vocab_size * cfg.embed_dim
  # QK^T and PV: 2 matmuls x 2 FLOPs x T x (H x K) per token forward, x3 for forward+backward
  attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  return 6 * matmul_params + attention


def peak_flops(device_kind: str, dtype: str) -> float | None:
  kind = device_kind.lower()
  for (name, d), value in PEAK_FLOPS.items():
    if d == dtype and name in kind:
      return value
  return None
