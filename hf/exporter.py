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
  if cfg.task != "lm":
    raise HfFormatError(f"task={cfg.task!r}: only language models (task=lm) export to HF")
  model_cfg = cfg.model
  if model_cfg.lora_rank and not merge_lora:
    raise HfFormatError("a LoRA run: pass --merge_lora to fold the adapters into the weights")
  architectures.export_architecture(dataclasses.replace(model_cfg, lora_rank=0))
  tokenizer = tokenizers.load(workdir)
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
  """Scanned blocks (leading layers axis) -> one dict per layer, as unscanned runs keep."""
  blocks = {i: jax.tree.map(lambda a, i=i: a[i], params["blocks"]) for i in range(cfg.num_layers)}
  return {**params, "blocks": blocks}, dataclasses.replace(cfg, scan_layers=False)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(jax.device_get(tree), dtype=np.float32)


def _entries(links: list, params: dict) -> list[safetensors_io.Entry]:
  """One Entry per HF tensor; a fused treadle weight is converted once per HF tensor it
  makes (cheap), so no more than one shard's tensors are ever held."""
  entries = []
  for link in links:
    for k, (name, shape) in enumerate(zip(link.hf_names, link.hf_shapes)):
      def produce(link=link, k=k, shape=shape):
        if link.path is None:
          return np.zeros(shape, np.float32)
        return link.to_hf(_get(params, link.path))[k]
      entries.append(safetensors_io.Entry(name, tuple(shape), produce))
  return entries


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
  tmp = out.with_name(f".{out.name}.exporting-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    (tmp / "config.json").write_text(json.dumps(body, indent=2))
    files = safetensors_io.write(tmp, _entries(weights.links(model_cfg, arch), params),
                                 max_shard_bytes)
    tokenizer_files.save(tokenizer, tmp, model_cfg.max_seq_len)
    if out.exists():
      out.rmdir()
    tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log.info("exported step %d of %s as %s to %s (%s)", step, workdir, arch, out, ", ".join(files))
  return arch
