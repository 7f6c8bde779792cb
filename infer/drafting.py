"""Drafts for speculative decoding (model/speculative.py): a smaller run or imported model with
the target's tokenizer, or n-gram prompt lookup.

A draft model is loaded like the target (parameters only, on the target's mesh, replicated:
it is small) and must tokenize exactly as the target does: the same tokenizer (its saved
form compared whole) and the same vocabulary size, or its proposals would be other tokens.
"""
import dataclasses
import pathlib
from typing import Any

import jax

from treadle.data import tokenizers
from treadle.infer import quantized
from treadle.model import quant
from treadle.model import speculative
from treadle.train import config as config_lib
from treadle.train import state as state_lib
from treadle.train import workdir as workdir_lib

NGRAM = "ngram"
DEFAULT_NUM_DRAFT_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class Draft:
  """What proposes tokens: a model (graphdef + params + its config) or n-gram lookup."""
  num_tokens: int = DEFAULT_NUM_DRAFT_TOKENS   # K, proposed per round
  cfg: Any = None                              # the draft's ModelConfig; None = n-gram
  graphdef: Any = None
  params: Any = None
  source: str = NGRAM                          # the workdir, or "ngram"

  def spec(self, draft_model=None) -> speculative.Spec:
    return speculative.Spec(self.num_tokens, draft_model)


def ngram(num_tokens: int = DEFAULT_NUM_DRAFT_TOKENS) -> Draft:
  return Draft(num_tokens)


def from_workdir(workdir, target_cfg, target_tokenizer, mesh,
                 num_tokens: int = DEFAULT_NUM_DRAFT_TOKENS, dtype=None,
                 quantize: str | None = None) -> Draft:
  """The draft run's latest parameters, replicated on `mesh`, in `dtype` (None: the run's);
  a tokenizer or vocabulary other than the target's is a one-line ValueError. A run written
  by treadle-quantize drafts with its int8 matrices; `quantize` ("int8") quantizes a float
  draft as the target is (model/quant.py)."""
  workdir = pathlib.Path(workdir)
  cfg = config_lib.from_run(workdir)
  workdir_lib.check_artifacts(workdir, role="draft workdir")
  tokenizer = tokenizers.load(workdir)
  if tokenizer.to_json() != target_tokenizer.to_json():
    raise ValueError(f"draft workdir {str(workdir)!r}: its tokenizer differs from the target's "
                     "(a draft must share the target's tokenizer)")
  if cfg.model.vocab_size != target_cfg.vocab_size:
    raise ValueError(f"draft workdir {str(workdir)!r}: model.vocab_size={cfg.model.vocab_size}, "
                     f"the target's is {target_cfg.vocab_size} (they must be equal)")
  model_cfg = cfg.model
  if dtype is not None:
    model_cfg = dataclasses.replace(model_cfg, compute_dtype=dtype)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  place = lambda abstract, _: jax.tree.map(lambda _: replicated, abstract)
  # quantizing reads float32: the int8 values come from the unrounded weights
  params, _ = quantized.read_params(workdir, None, model_cfg, place,
                                    model_cfg.dtype if dtype and not quantize else None)
  params = quant.for_inference(params, model_cfg, quantize,
                               model_cfg.dtype if dtype is not None else None)
  graphdef = state_lib.model_graph(model_cfg)[0]
  return Draft(num_tokens, model_cfg, graphdef, params, str(workdir))


def check(draft: Draft, target_window: int) -> None:
  """num_tokens against both models' windows (speculative.check), as a ValueError."""
  if draft.cfg is None:
    speculative.check(speculative.Spec(draft.num_tokens), target_window)
    return
  speculative.check(speculative.Spec(draft.num_tokens, _Shape(draft.cfg)), target_window)


@dataclasses.dataclass(frozen=True)
class _Shape:
  """Stands in for a draft model where only its config is read (speculative.check)."""
  cfg: Any

