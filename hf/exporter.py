"""treadle run directory -> Hugging Face model directory (config.json, safetensors,
tokenizer files) that transformers' from_pretrained loads. Checked before writing; the
output appears complete or not at all."""
import dataclasses
import json
import logging
import os
import pathlib
import shutil

import jax
import numpy as np

from treadle.common import entry
from treadle.configs import base as base_config
from treadle.data import tokenizers
from treadle.hf import architectures
from treadle.hf import safetensors_io
from treadle.hf import tokenizer_files
from treadle.hf import weights
from treadle.hf.safetensors_io import HfFormatError
from treadle.model import lora
from treadle.train import checkpoint
from treadle.train import config as config_lib
from treadle.train import state as state_lib

log = logging.getLogger("treadle")
DEFAULT_SHARD_BYTES = 2 * 1024**3


def load_run(workdir, step=None, merge_lora: bool = False):
  """(plain model config, host parameters, tokenizer, step) of a run on one device."""
  workdir = pathlib.Path(workdir)
  try:
    cfg = config_lib.from_run(workdir)
  except FileNotFoundError as e:
    raise HfFormatError(str(e)) from None
  if cfg.task not in base_config.DECODER_TASKS:
    raise HfFormatError(f"task={cfg.task!r}: only language models "
                        f"(task={'/'.join(base_config.DECODER_TASKS)}) export to HF")
  model_cfg = cfg.model
  if model_cfg.lora_rank and not merge_lora:
    raise HfFormatError("a LoRA run: pass --merge_lora to fold the adapters into the weights")
  if model_cfg.width_mult != 1.0:  # transformers' architectures have no mup multipliers
    raise HfFormatError(f"model.parametrization=mup at width multiplier "
                        f"{model_cfg.width_mult:g} (embed_dim / mup_base_width): its logit and "
                        f"attention multipliers have no Hugging Face config field")
  architectures.export_architecture(dataclasses.replace(model_cfg, lora_rank=0))
  tokenizer = tokenizers.load(workdir)
  checkpoint.check_float(workdir)
  reader = checkpoint.reader(workdir)
  try:
    step = checkpoint.resolve_step(reader, step)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    _, abstract, _ = state_lib.model_graph(model_cfg)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract)
    params = checkpoint.restore_params(reader, step, target)
  finally:
    reader.close()
  if model_cfg.lora_rank:
    params, model_cfg = lora.merge(params, model_cfg)
  if model_cfg.scan_layers:
    params, model_cfg = _unstack_layers(params, model_cfg)
  return model_cfg, params, tokenizer, step


def _unstack_layers(params: dict, cfg):
  """Scanned blocks (leading layers axis) -> one dict per layer, as unscanned runs keep.
  MoE blocks interleaved with dense ones are scanned in groups (model/gpt.py's BlockGroup,
  {"blocks": {j: block}}): block i is group i // size, position i % size."""
  stacked = params["blocks"]
  groups = stacked["blocks"] if set(stacked) == {"blocks"} else {0: stacked}
  size = len(groups)
  blocks = {i: jax.tree.map(lambda a, i=i: a[i // size], groups[i % size])
            for i in range(cfg.num_layers)}
  return {**params, "blocks": blocks}, dataclasses.replace(cfg, scan_layers=False)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(jax.device_get(tree), dtype=np.float32)


def _entries(links: list, params: dict) -> list[safetensors_io.Entry]:
  """One Entry per HF tensor; a fused treadle weight is converted once per HF tensor it
  makes (cheap: views), so no more than one shard's tensors are ever held. The last weight
  fetched to the host is kept: MoE experts are one weight for 2E or E HF tensors, which
  would otherwise each copy the whole weight off the device."""
  entries, last = [], {}
  for link in links:
    for k, (name, shape) in enumerate(zip(link.hf_names, link.hf_shapes)):
      def produce(link=link, k=k, shape=shape):
        if link.path is None:
          return np.zeros(shape, np.float32)
        if last.get("path") != link.path:
          last.update(path=link.path, host=_get(params, link.path))
        return link.to_hf(last["host"])[k]
      entries.append(safetensors_io.Entry(name, tuple(shape), produce))
  return entries


def _param_paths(tree, prefix=()) -> list[tuple]:
  if not isinstance(tree, dict):
    return [prefix]
  return [p for k, v in tree.items() for p in _param_paths(v, (*prefix, k))]


def check_mapping(links: list, params: dict, arch: str) -> None:
  """Every treadle parameter goes into exactly one HF tensor group, and no HF name twice
  (a parameter without a link would be silently lost: transformers initialises the tensor)."""
  written: dict[tuple, int] = {}
  for link in links:
    if link.path is not None:
      written[tuple(link.path)] = written.get(tuple(link.path), 0) + 1
  names = [n for link in links for n in link.hf_names]
  for path in _param_paths(params):
    count = written.pop(path, 0)
    if count != 1:
      where = "/".join(map(str, path))
      raise HfFormatError(f"parameter {where} is written twice to {arch}" if count else
                          f"parameter {where} is not written: {arch} has no tensor for it")
  if written:
    raise HfFormatError(f"{arch} tensor from {'/'.join(map(str, next(iter(written))))}, "
                        "which the run does not have")
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise HfFormatError(f"tensor {twice[0]!r} is written twice")


def check_written(out: pathlib.Path) -> None:
  """What was written reads back as the importer reads it: every tensor the written
  config.json implies exists with its shape, and no tensor has no place in it."""
  from treadle.hf import importer  # noqa: PLC0415 (the reader of what this module writes)
  try:
    arch, options = architectures.model_options(json.loads((out / "config.json").read_text()))
    cfg = importer.run_config(options, None).model
    tensors = safetensors_io.scan(out)
    importer.check_tensors(weights.links(cfg, arch), tensors, cfg)
  except (HfFormatError, ValueError) as e:
    raise HfFormatError(f"the export does not load back: {entry.first_line(e)}") from None


def _fresh_target(out: pathlib.Path) -> None:
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise HfFormatError(f"--hf_dir={str(out)!r} exists and is not empty")


def export(workdir, hf_dir, step=None, merge_lora: bool = False,
           max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> str:
  """Writes the HF directory; returns the architecture written."""
  out = pathlib.Path(hf_dir).absolute()
  _fresh_target(out)
  model_cfg, params, tokenizer, step = load_run(workdir, step, merge_lora)
  token_ids = getattr(tokenizer, "token_ids", {})
  arch, body = architectures.hf_config(model_cfg, token_ids)
  links = weights.links(model_cfg, arch)
  check_mapping(links, params, arch)
  tmp = out.with_name(f".{out.name}.exporting-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    (tmp / "config.json").write_text(json.dumps(body, indent=2))
    files = safetensors_io.write(tmp, _entries(links, params), max_shard_bytes)
    check_written(tmp)
    tokenizer_files.save(tokenizer, tmp, model_cfg.max_seq_len)
    if out.exists():
      out.rmdir()
    tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log.info("exported step %d of %s as %s to %s (%s)", step, workdir, arch, out, ", ".join(files))
  return arch
