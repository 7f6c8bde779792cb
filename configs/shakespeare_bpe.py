"""The CPU recipe with a byte-level BPE tokenizer (1024 tokens) trained on the train split.

Command:
  treadle-train --config configs/shakespeare_bpe.py --workdir runs/bpe
  treadle-sample --workdir runs/bpe --prompt "ROMEO:" --max_new_tokens 100
The tokenizer is fitted with HuggingFace `tokenizers` on the train split (~1 s; fit and
encode of the 5 MB default corpus ~3 s) and saved as the run's tokenizer.json. A token is
~2.3 characters of that corpus, so context 128 covers ~300 characters, and losses are per
token: divide by ~2.3 to compare with the character configs.
Measured (2-core CPU, 2026-11-24, default corpus): only a 50-step smoke run
(--config.train.num_steps=50 --config.train.eval_every=25): train loss 6.73 at step 10,
val 6.42 at step 25, val 5.83 / test 5.88 at step 50 (ln 1024 = 6.93), ~5-9k tokens/s,
29 s wall. The full 2000 steps (~0.25 s/step here) was not run.
"""
import ml_collections

from configs import shakespeare_char_cpu


def get_config() -> ml_collections.ConfigDict:
  c = shakespeare_char_cpu.get_config()
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 1024
  c.data.seq_len = 128
  return c
