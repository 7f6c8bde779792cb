"""Hugging Face model directory -> treadle run directory (config.json, tokenizer, Orbax
checkpoint of the parameters), validated completely before anything is written."""
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.experimental.v1 import partial as ocp_partial

from treadle.configs import base as base_config
from treadle.data import tokenizers
from treadle.hf import architectures
from treadle.hf import dir_files
from treadle.hf import moe_weights
from treadle.hf import safetensors_io
from treadle.hf import tokenizer_files
from treadle.hf import weights
from treadle.hf.safetensors_io import HfFormatError
from treadle.train import checkpoint
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib
from treadle.train import state as state_lib

log = logging.getLogger("treadle")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything checked: what to read, how to convert it, what to write."""
  cfg: config_lib.RunConfig
  arch: str
  links: list
  tensors: dict  # HF name -> safetensors_io.TensorInfo
  tokenizer: tokenizers.HfTokenizer


def read_config(hf_dir: pathlib.Path) -> dict:
  if not hf_dir.is_dir():
    raise HfFormatError(f"--hf_dir={str(hf_dir)!r} is not a directory")
  path = dir_files.path(hf_dir, "config.json", "config.json")
  if not path.exists():
    raise HfFormatError(f"no config.json in {str(hf_dir)!r}")
  return dir_files.read_object(path)


def read_generation_config(hf_dir: pathlib.Path) -> dict:
  """generation_config.json's body; {} when the directory has none (it is optional)."""
  name = architectures.GENERATION_CONFIG
  path = dir_files.path(hf_dir, name, name)
  return dir_files.read_object(path) if path.exists() else {}


def run_config(options: dict, base: ml_collections.ConfigDict | None) -> config_lib.RunConfig:
  """The imported run's config: `base` (default: configs/base.py's LM sections) with model.*
  replaced by the HF model's options and the tokenizer kind `hf`."""
  d = (base if base is not None else base_config.get_config("lm")).to_dict()
  d["model"] = {**d["model"], **options, "scan_layers": False}  # unscanned: one tensor a layer
  d["data"] = {**d["data"], "tokenizer": "hf", "vocab_size": 0}
  return config_lib.split(d)


def check_tensors(links: list, tensors: dict, model_cfg) -> None:
  used = set()
  for link in links:
    for name, shape in zip(link.hf_names, link.hf_shapes):
      if name not in tensors:
        raise HfFormatError(f"tensor {name!r} is missing from the safetensors files")
      if tensors[name].shape != tuple(shape):
        raise HfFormatError(f"tensor {name!r} has shape {list(tensors[name].shape)}, "
                            f"config.json implies {list(shape)}")
      used.add(name)
  extra = sorted(n for n in tensors if n not in used and not weights.ignorable(n, model_cfg))
  if extra:
    raise HfFormatError(f"tensor {extra[0]!r} has no place in the model "
                        f"({len(extra)} unexpected tensors)")


def plan(hf_dir, base: ml_collections.ConfigDict | None = None) -> Plan:
  """Reads config.json, tokenizer and safetensors headers; raises HfFormatError (one line)
  on anything it cannot map."""
  hf_dir = pathlib.Path(hf_dir)
  hf_config = read_config(hf_dir)
  arch, options = architectures.model_options(hf_config)
  token_ids = architectures.token_ids(hf_config, options["vocab_size"])
  token_ids.update(architectures.generation_token_ids(read_generation_config(hf_dir),
                                                      options["vocab_size"]))
  try:
    cfg = run_config(options, base)
  except ValueError as e:
    raise HfFormatError(f"config.json maps to an invalid model: {e}") from None
  tensors = safetensors_io.scan(hf_dir)
  prefix = "" if "wte.weight" in tensors else "transformer."  # files before transformers 5
  links = weights.links(cfg.model, arch, prefix, moe_weights.fused_layout(tensors))
  check_tensors(links, tensors, cfg.model)
  tokenizer = tokenizer_files.load(hf_dir, cfg.model.vocab_size)
  tokenizer.token_ids.update(token_ids)
  return Plan(cfg, arch, links, tensors, tokenizer)


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def _layers(links: list) -> list[list]:
  """The links grouped by layer (a path's first two keys: `blocks_3/attn`, `embed/...`)."""
  groups: dict[tuple, list] = {}
  for link in links:
    if link.path is not None:  # None: a tensor that exists only on the HF side
      groups.setdefault(tuple(link.path[:2]), []).append(link)
  return list(groups.values())


def _convert(p: Plan, link, abstract, shardings) -> jax.Array:
  """One parameter read from safetensors, converted to float32 and placed on its sharding."""
  sources = [safetensors_io.read(p.tensors[n], n) for n in link.hf_names]
  array = np.asarray(link.to_treadle(*sources), dtype=np.float32)
  del sources
  want = _get(abstract, link.path)
  if array.shape != want.shape:
    raise HfFormatError(f"{'/'.join(map(str, link.path))}: converted shape {array.shape} != "
                        f"{want.shape}")
  return jax.make_array_from_callback(array.shape, _get(shardings, link.path),
                                      lambda index: array[index])


def save_params(p: Plan, mesh: jax.sharding.Mesh, step_dir: pathlib.Path) -> int:
  """Reads, converts and places the parameters onto their shardings on `mesh`, and saves
  them as the `state` item of the checkpoint step `step_dir`, one layer at a time (Orbax
  partial saves): in memory at once is one layer plus the tensor being converted, never
  the whole model. Returns the parameter count."""
  _, abstract, specs = state_lib.model_graph(p.cfg.model)
  shardings = mesh_lib.param_shardings(specs, mesh, mesh_lib.rules(p.cfg.mesh.rules))
  mesh_lib.check_divisible(abstract, shardings)
  count = 0
  for layer in _layers(p.links):
    params = {}
    for link in layer:
      _set(params, link.path, _convert(p, link, abstract, shardings))
    ocp_partial.save(step_dir, {"params": params})
    count += sum(x.size for x in jax.tree.leaves(params))
    del params
  ocp_partial.finalize(step_dir)
  return count


def _fresh_target(workdir: pathlib.Path) -> None:
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise HfFormatError(f"--workdir={str(workdir)!r} exists and is not empty")


def write_run(p: Plan, mesh: jax.sharding.Mesh, workdir: pathlib.Path) -> int:
  """Writes config, tokenizer and checkpoint step 0 (the parameters, no optimizer state:
  a fine-tuning run creates it fresh) into a sibling temporary directory, renamed into
  place once complete. Returns the parameter count."""
  tmp = workdir.with_name(f".{workdir.name}.importing-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    tokenizers.save(p.tokenizer, tmp)
    (tmp / "config.json").write_text(json.dumps(p.cfg.to_dict(), indent=2))
    step_dir = checkpoint.directory(tmp) / "0"
    step_dir.parent.mkdir(parents=True)
    count = save_params(p, mesh, step_dir)
    (step_dir / "config").mkdir()
    ocp.JsonCheckpointHandler().save(step_dir / "config",
                                     args=ocp.args.JsonSave(p.cfg.to_dict()))
    if workdir.exists():
      workdir.rmdir()  # empty (checked before reading any tensor)
    tmp.rename(workdir)
    return count
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def import_model(hf_dir, workdir, base: ml_collections.ConfigDict | None = None,
                 devices=None) -> config_lib.RunConfig:
  """The whole import; returns the run's config. Nothing is written unless it succeeds."""
  start = time.perf_counter()
  workdir = pathlib.Path(workdir).absolute()
  _fresh_target(workdir)
  p = plan(hf_dir, base)
  mesh = mesh_lib.make_mesh(p.cfg.mesh.shape, devices)
  count = write_run(p, mesh, workdir)
  log.info("imported %s (%s parameters) into %s in %.1f s", p.arch, f"{count:,}", workdir,
           time.perf_counter() - start)
  return p.cfg
