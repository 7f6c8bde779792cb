"""Models: logical-axis-annotated Flax NNX modules.

Shape suffixes used in names throughout:
  B batch, T query length, S key/cache length, D embed, H heads, G kv heads,
  R query heads per kv head, K head dim,
  F mlp hidden, V vocabulary, L layers.
"""
