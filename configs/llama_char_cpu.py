"""A Llama-style decoder at the size of the GPT-2 CPU recipe (configs/shakespeare_char_cpu.py).

RoPE positions, RMSNorm, SwiGLU MLP, grouped-query attention (4 query heads sharing 2
key/value heads), no biases, untied output layer. The SwiGLU width 3 * embed_dim makes each
block exactly as large as the GPT-2 block (12 * embed_dim^2 matmul weights: GQA saves
embed_dim^2 in attention, SwiGLU's third matrix spends it); the untied output layer
(72 x 128) stands in for GPT-2's learned positions (64 x 128). Same data, optimizer and
steps as the GPT-2 preset.

Command:
  treadle-train --config configs/llama_char_cpu.py --workdir runs/llama
  treadle-sample --workdir runs/llama --prompt "ROMEO:"
Measured against the GPT-2 preset: experiments/llama_vs_gpt2/README.md.
"""
import ml_collections

from treadle.configs import shakespeare_char_cpu


def get_config() -> ml_collections.ConfigDict:
  c = shakespeare_char_cpu.get_config()
  c.model.position = "rope"
  c.model.norm = "rmsnorm"
  c.model.mlp = "swiglu"
  c.model.mlp_hidden_dim = 3 * c.model.embed_dim
  c.model.num_kv_heads = 2
  c.model.tie_embeddings = False
  c.model.use_bias = False
  return c
