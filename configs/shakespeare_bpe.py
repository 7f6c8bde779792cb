"""The CPU recipe with a byte-level BPE tokenizer (1024 tokens) trained on the train split.

Command:
  treadle-train --config configs/shakespeare_bpe.py --workdir runs/bpe
  treadle-sample --workdir runs/bpe --prompt "ROMEO:" --max_new_tokens 100
The tokenizer is fitted with HuggingFace `tokenizers` on the train split (~1 s; fit and
encode of the 5 MB default corpus ~3 s) and saved as the run's tokenizer.json. A token is
~2.3 characters of that corpus, so context 128 covers ~300 characters, and losses are per
token: divide by ~2.3 to compare with the character configs.
Measured (2-core CPU, 2026-11-24, default corpus, the command above): val loss 3.769 and
test loss 3.730 per token at step 2000 (val 3.974 at step 1000), 373 s wall for the whole
command (another process sharing the CPU); at ~2.29 characters per val token that is ~1.65 nats
per character, against 1.933 (val) for the character model of the same size
(configs/shakespeare_char_cpu.py, experiments/llama_vs_gpt2).
"""
import ml_collections

from treadle.configs import shakespeare_char_cpu


def get_config() -> ml_collections.ConfigDict:
  c = shakespeare_char_cpu.get_config()
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 1024
  c.data.seq_len = 128
  return c
