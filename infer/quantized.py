"""Quantized run directories (treadle-quantize): writing one and loading its parameters.

A quantized run directory is a run directory whose checkpoint step holds the parameters
with every matrix as int8 values + float32 scales (model/quant.py, stored as {"q", "scale"}
pairs), no optimizer state, and a `quantization.json` that says so ({"quantize": "int8",
"source": the float run, "step": its step}). Its config.json, tokenizer.json,
preprocess.json and fingerprints.json are the source run's, so the sampler reads it as it
reads the source (tokenizer checks included) without the float checkpoint.
"""
import json
import os
import pathlib
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from treadle.model import quant
from treadle.train import checkpoint
from treadle.train import state as state_lib
from treadle.train import workdir as workdir_lib

_COPIED = ("config.json", *workdir_lib.ARTIFACT_FILENAMES, workdir_lib.FINGERPRINTS_FILENAME)


def recorded(workdir) -> str | None:
  """The quantization of a run directory written by treadle-quantize ("int8"), else None."""
  path = pathlib.Path(workdir) / quant.FILENAME
  if not path.exists():
    return None
  try:
    mode = json.loads(path.read_text())["quantize"]
  except (ValueError, KeyError, TypeError):
    raise ValueError(f"{str(path)!r} is not a valid {quant.FILENAME}") from None
  quant.check_mode(mode)
  return mode


def load_params(workdir, step: int | str | None, model_cfg,
                shardings: Callable[[Any, Any], Any]) -> tuple[Any, int]:
  """A quantized run's parameters (QWeight leaves) -> (params, step); `shardings` as in
  checkpoint.load_params (of the float tree: the quantized leaves follow their weight's)."""
  _, abstract, specs = state_lib.model_graph(model_cfg)
  placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings(abstract, specs))
  target = quant.to_storage(quant.abstract(placed, model_cfg))
  mgr = checkpoint.reader(workdir)
  try:
    step = checkpoint.resolve_step(mgr, step)
    return quant.from_storage(checkpoint.restore_params(mgr, step, target)), step
  finally:
    mgr.close()


def read_params(workdir, step: int | str | None, model_cfg,
                shardings: Callable[[Any, Any], Any], float_dtype=None) -> tuple[Any, int]:
  """Any run's parameters for inference -> (params, step): a treadle-quantize run's int8
  ones, else the float ones, cast to `float_dtype` as Orbax reads them (None: as saved)."""
  if recorded(workdir):
    return load_params(workdir, step, model_cfg, shardings)
  return checkpoint.load_params(workdir, step, model_cfg, shardings, float_dtype)


def check_target(out: pathlib.Path) -> None:
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise FileExistsError(f"--out={str(out)!r} exists and is not empty")


def write_run(source: pathlib.Path, step: int, params, saved_config: dict,
              out: pathlib.Path, mode: str = "int8") -> None:
  """Writes the quantized run into a sibling temporary directory, renamed into place once
  complete (a failure leaves nothing at `out`)."""
  tmp = out.with_name(f".{out.name}.quantizing-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    for name in _COPIED:
      if (source / name).exists():
        shutil.copy2(source / name, tmp / name)
    mgr = ocp.CheckpointManager(checkpoint.directory(tmp), options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False))
    mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": quant.to_storage(params)}),
        config=ocp.args.JsonSave(saved_config)), force=True)
    mgr.wait_until_finished()
    mgr.close()
    (tmp / quant.FILENAME).write_text(json.dumps(
        {"quantize": mode, "source": str(source), "step": step}, indent=2) + "\n")
    if out.exists():
      out.rmdir()  # empty (checked before anything was read)
    tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
