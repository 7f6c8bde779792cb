"""nanoGPT's shakespeare_char recipe: a 6-layer, 384-wide character GPT, context 256.

Command:
  treadle-train --config configs/shakespeare_char.py --workdir runs/char \
      --config.data.path=../shared/data/tinyshakespeare/input.txt
Measured: not run to completion on the 2-core CPU (5000 steps at ~10.4 s/step, MFU 0.70);
see experiments/bench for its step time.
"""
import ml_collections

from treadle.configs import shakespeare_char_cpu


def get_config() -> ml_collections.ConfigDict:
  c = shakespeare_char_cpu.get_config()
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.embed_dim = 384
  c.model.dropout = 0.2
  c.data.seq_len = 256
  c.train.batch_size = 64
  # 16 scanned micro-batches of 4 rows (one update, the same mean gradient): on CPU, matmuls
  # 16k rows tall are slower per FLOP: 10.4 s/step (MFU 0.70) vs 11.8 s (0.62) with 1,
  # measured with experiments/bench/train_bench.py. With more than 4 devices lower it
  # (each micro-batch must split over the mesh's batch axes), e.g. to 1 on a GPU node.
  c.train.grad_accum_steps = 16
  c.train.num_steps = 5000
  c.optimizer.warmup_steps = 100
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  return c
