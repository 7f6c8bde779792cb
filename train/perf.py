"""Model FLOPs per token and the peak-FLOPs table behind MFU."""
from model import gpt

# Dense peak FLOP/s per device. "cpu" entries are *measured* large-matmul throughput of
# this project's 2-core AVX-512 dev machine (not a vendor figure); override with
# train.peak_flops when running elsewhere.
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


def num_params(cfg: gpt.ModelConfig, include_embeddings: bool = True) -> int:
  D, L, F = cfg.embed_dim, cfg.num_layers, cfg.embed_dim * cfg.mlp_ratio
  per_layer = 3 * D * D + D * D + 2 * D * F + 2 * D
  total = L * per_layer + D
  if include_embeddings:
    total += cfg.padded_vocab_size * D + cfg.max_seq_len * D
  return total


def flops_per_token(cfg: gpt.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 x (matmul params incl. the tied output layer) + attention."""
  matmul_params = num_params(cfg, include_embeddings=False) + cfg.padded_vocab_size * cfg.embed_dim
  # QK^T and PV: 2 matmuls x 2 FLOPs x T x D per token forward, x3 for forward+backward
  attention = 12 * cfg.num_layers * seq_len * cfg.embed_dim
  return 6 * matmul_params + attention


def peak_flops(device_kind: str, dtype: str) -> float | None:
  kind = device_kind.lower()
  for (name, d), value in PEAK_FLOPS.items():
    if d == dtype and name in kind:
      return value
  return None
