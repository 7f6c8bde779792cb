"""treadle-export-hf: write a treadle run as a Hugging Face model directory.

  treadle-export-hf --workdir=W --hf_dir=OUT [--step N|best] [--merge_lora] [--max_shard_mb M]

OUT (new or empty) gets config.json, model.safetensors (sharded with an index past
--max_shard_mb) and tokenizer.json + tokenizer_config.json, loadable with
transformers.AutoModelForCausalLM / AutoTokenizer.from_pretrained(OUT). Learned-position
runs become GPT2LMHeadModel, RoPE runs LlamaForCausalLM (Qwen2ForCausalLM with q/k/v-only
biases). An option with no HF equivalent: one line, exit 2, nothing written.
"""
from absl import flags

from treadle.common import entry

_WORKDIR = flags.DEFINE_string("workdir", None, "treadle run directory to export.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory to create.")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step: a number, 'best' or latest (default).")
_MERGE_LORA = flags.DEFINE_bool("merge_lora", False, "LoRA runs: fold the adapters in (required).")
_MAX_SHARD_MB = flags.DEFINE_integer("max_shard_mb", 2048, "Largest safetensors file, in MiB.")


def main(argv) -> None:
  del argv
  if not _HF_DIR.value or not _WORKDIR.value:
    entry.fail("both --workdir and --hf_dir are required")
  if _MAX_SHARD_MB.value < 1:
    entry.fail(f"--max_shard_mb={_MAX_SHARD_MB.value} must be positive")
  step = entry.checkpoint_step(_STEP.value)
  from treadle.common import hosts  # noqa: E402  (before jax starts: one device is enough)
  hosts.configure(1, "default")
  from treadle.hf import exporter
  from treadle.common import logs
  logs.setup()
  with entry.one_line_errors():
    exporter.export(_WORKDIR.value, _HF_DIR.value, step, _MERGE_LORA.value,
                    _MAX_SHARD_MB.value * 1024**2)


def run() -> None:
  entry.run(main)


if __name__ == "__main__":
  run()
