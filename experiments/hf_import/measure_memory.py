"""Peak RSS and wall time of treadle-import-hf on a randomly initialised GPT-2-124M-sized
Hugging Face model (transformers' default GPT2Config: 12 layers, 768 wide, vocab 50257).

  python -m experiments.hf_import.measure_memory [--keep DIR]   (from the repository root)

Needs torch and transformers (the hf-test extra) to build the model; the import itself
runs in its own process (`python -m treadle.hf.import_cli`), whose peak RSS is measured;
so is the RSS of a process that only imports the importer's modules (the floor
of the Python, jax and Orbax runtime, whatever the model).
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from experiments.bench import machine


def build(hf_dir: pathlib.Path) -> int:
  """Writes the random model and a byte-level tokenizer; returns the fp32 parameter bytes."""
  import tokenizers as hf
  import torch
  import transformers
  from tokenizers import decoders, models, pre_tokenizers
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
  model.save_pretrained(hf_dir)
  tok = hf.Tokenizer(models.BPE({c: i for i, c in enumerate(
      pre_tokenizers.ByteLevel.alphabet())}, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.save(str(hf_dir / "tokenizer.json"))
  return sum(p.numel() for p in model.parameters()) * 4


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--keep", help="directory to keep the model and run in")
  parser.add_argument("--build", help=argparse.SUPPRESS)  # internal: build the model here
  args = parser.parse_args()
  if args.build:
    print(build(pathlib.Path(args.build)))
    return
  root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="treadle-hf-import-"))
  root.mkdir(parents=True, exist_ok=True)
  # torch is loaded in a child, never here: a child forked from a large parent would count
  # the parent's pages in its own peak RSS
  fp32_bytes = int(subprocess.run([sys.executable, "-m", "experiments.hf_import.measure_memory",
                                   f"--build={root / 'hf'}"],
                                  check=True, capture_output=True, text=True).stdout.split()[-1])
  floor, _ = _peak_rss([sys.executable, "-c", "import treadle.hf.importer"])
  peak, seconds = _peak_rss([sys.executable, "-m", "treadle.hf.import_cli",
                             f"--hf_dir={root / 'hf'}", f"--workdir={root / 'run'}"])
  mb = lambda n: round(n / 2**20)
  print(json.dumps({"fp32_param_mb": mb(fp32_bytes), "peak_rss_mb": mb(peak),
                    "peak_over_fp32": round(peak / fp32_bytes, 2),
                    "runtime_floor_mb": mb(floor),
                    "peak_above_floor_over_fp32": round((peak - floor) / fp32_bytes, 2),
                    "import_seconds": round(seconds, 1)}))


def _peak_rss(command: list[str]) -> tuple[int, float]:
  """(peak RSS in bytes, wall seconds) of one command."""
  usage = machine.measure_process(command)
  if usage.returncode:
    raise SystemExit(f"{command} failed:\n{usage.stderr[-3000:]}")
  return usage.peak_rss_bytes, usage.seconds


if __name__ == "__main__":
  main()
