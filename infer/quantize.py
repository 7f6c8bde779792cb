"""treadle-quantize: write an int8 weight-only copy of a run for sampling and serving.

  treadle-quantize --workdir runs/cpu --out runs/cpu-int8 [--step N|best]

The output is a run directory (infer/quantized.py) that `treadle-sample --workdir OUT` and
`treadle-serve --workdir OUT` load without the float run: the checkpoint holds the
decoder's matrices as int8 with per-output-channel float32 scales (model/quant.py), ~1/4
of the float32 bytes, and the other parameters as they were. Training, export and
fine-tuning read float runs only.

Bad input (no --workdir or --out, a directory that is not a run or has no checkpoint, a
run that is already quantized, an --out that exists and is not empty, an unknown step) is
a one-line error with exit code 2, and nothing is written.
"""
import logging
import pathlib

from absl import flags

from treadle.common import entry

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by treadle-train or "
                               "treadle-import-hf.")
_OUT = flags.DEFINE_string("out", None, "New run directory for the quantized copy (absent or "
                           "empty).")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step: a number, 'best' or latest (default).")
_QUANTIZE = flags.DEFINE_enum("quantize", "int8", ["int8"], "Weight format.")


def main(argv) -> None:
  del argv
  if not _WORKDIR.value:
    entry.fail("--workdir is required")
  if not _OUT.value:
    entry.fail("--out is required")
  step = entry.checkpoint_step(_STEP.value)
  import jax  # after flag parsing: a bad flag never starts jax
  from treadle.common import logs
  from treadle.infer import quantized
  from treadle.model import quant
  from treadle.train import checkpoint
  from treadle.train import config as config_lib
  from treadle.train import mesh as mesh_lib
  from treadle.train import workdir as workdir_lib
  logs.setup()
  workdir = pathlib.Path(_WORKDIR.value).absolute()
  out = pathlib.Path(_OUT.value).absolute()
  with entry.one_line_errors(ValueError, FileNotFoundError, FileExistsError):
    quantized.check_target(out)
    cfg = config_lib.from_run(workdir)
    if quantized.recorded(workdir):
      raise ValueError(f"--workdir={str(workdir)!r} is already quantized")
    workdir_lib.check_artifacts(workdir)
    mesh = mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
    shardings = lambda abstract, specs: mesh_lib.param_shardings(specs, mesh,
                                                                 mesh_lib.rules("dp"))
    params, step = checkpoint.load_params(workdir, step, cfg.model, shardings)
    reader = checkpoint.reader(workdir)
    try:
      saved_config = checkpoint.saved_config(reader, step)
    finally:
      reader.close()
    float_bytes = quant.weights_bytes(params)
    params = quant.quantize_placed(params, cfg.model)
    quantized.write_run(workdir, step, params, saved_config, out, _QUANTIZE.value)
  logging.getLogger("treadle.quantize").info("wrote %s: step %d, %s weights, %s bytes (float: %s, %.3fx)", out, step,
           _QUANTIZE.value, f"{quant.weights_bytes(params):,}", f"{float_bytes:,}",
           quant.weights_bytes(params) / float_bytes)


def run() -> None:
  entry.run(main)


if __name__ == "__main__":
  run()
