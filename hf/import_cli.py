"""treadle-import-hf: turn a local Hugging Face model directory into a treadle run directory.

  treadle-import-hf --hf_dir=DIR --workdir=W [--config.mesh.rules=fsdp --config.mesh.cpu_devices=8]

DIR holds config.json, model.safetensors (or model-*.safetensors with
model.safetensors.index.json) and tokenizer.json (tokenizer_config.json and
chat_template.jinja too, if any). GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM and
Qwen2ForCausalLM. W must be new or empty. --config.* sets the run's other sections (model.*
comes from the HF config); the parameters are placed onto the mesh of --config.mesh.*
(default: one CPU device) as they are read. Bad input: one line, exit 2, nothing written.
"""
from absl import flags
from ml_collections import config_flags

from treadle.configs import shakespeare_char_cpu
from treadle.common import entry

# one device by default: an import only converts and saves; the checkpoint restores onto
# any mesh later, and a replicated (dp) placement would hold one copy per device
_BASE = shakespeare_char_cpu.get_config()
_BASE.mesh.cpu_devices = 1

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory to import.")
_WORKDIR = flags.DEFINE_string("workdir", None, "treadle run directory to create.")
_CONFIG = config_flags.DEFINE_config_dict("config", _BASE, "Run settings (mesh.* for placement).",
                                          lock_config=True)


def main(argv) -> None:
  del argv
  if not _HF_DIR.value or not _WORKDIR.value:
    entry.fail("both --hf_dir and --workdir are required")
  from treadle.common import hosts  # noqa: E402  (after flags: device count before jax starts)
  hosts.configure(_CONFIG.value.mesh.cpu_devices, _CONFIG.value.train.matmul_precision)
  from treadle.hf import importer
  from treadle.common import logs
  logs.setup()
  with entry.one_line_errors():
    importer.import_model(_HF_DIR.value, _WORKDIR.value, _CONFIG.value)


def run() -> None:
  entry.run(main)


if __name__ == "__main__":
  run()
