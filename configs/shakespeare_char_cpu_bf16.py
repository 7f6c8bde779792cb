"""nanoGPT's CPU recipe (configs/shakespeare_char_cpu.py) with bf16 compute.

Matmuls and activations in bfloat16; parameters, optimizer state, loss, softmax and
normalisation statistics stay float32 (model.compute_dtype; the fp32 master weights are what
checkpoints hold). For CPUs with AVX512_BF16 on Python >= 3.12 (jax 0.12: XLA:CPU runs bf16
dots natively there) and for accelerators. A CPU without AVX512_BF16 converts each bf16 dot
to fp32 and is slower than the fp32 recipe: on a 2-core Zen 3 EPYC the runs below trained at
~5.5k tokens/s (346-371 s per command), the fp32 recipe at 7.1k tokens/s in
experiments/bench/train_vs_nanogpt.py on the same machine 20 minutes later.

Command:
  treadle-train --config configs/shakespeare_char_cpu_bf16.py --workdir runs/cpu_bf16 \
      --config.data.path=../shared/data/tinyshakespeare/input.txt
Measured on tinyshakespeare (2026-12-03, Python 3.13, jax 0.12.0.1, 2-core Zen 3 EPYC), val
loss at step 2000 over the whole validation split:
  seed 1337 (default) 1.8914 (test 1.9180) | seed 0 1.8811 (test 1.9213) |
  seed 1 1.8820 (test 1.9199) | mean of the three 1.8848 (fp32 recipe: 1.8868; goal <= 1.89).
  Seeds by --config.train.seed=N.
"""
import ml_collections

from treadle.configs import shakespeare_char_cpu


def get_config() -> ml_collections.ConfigDict:
  c = shakespeare_char_cpu.get_config()
  c.model.compute_dtype = "bfloat16"
  return c
