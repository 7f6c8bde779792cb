"""How treadle-sample and treadle-serve load a run: the flags both take (LoRA merge, dtype,
int8 weights, speculative drafts), declared here once, their checks, and the
`Sampler.from_workdir` arguments they give. Imports no jax: a bad flag fails before it starts."""
from absl import flags

from treadle.common import entry

_MERGE_LORA = flags.DEFINE_bool("merge_lora", False,
                                "LoRA runs: fold the adapters into the base weights first.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Weights and compute dtype, cast at load; default: the run's "
                           "compute dtype with float32 weights.")
_QUANTIZE = flags.DEFINE_enum("quantize", None, ["int8"],
                              "Store the decoder's matrices as int8 with per-output-channel "
                              "scales (quantized at load; a treadle-quantize run is int8 "
                              "already).")
_DRAFT_WORKDIR = flags.DEFINE_string("draft_workdir", None,
                                     "Speculative decoding: a smaller run or imported model "
                                     "with the same tokenizer proposes tokens.")
_DRAFT = flags.DEFINE_enum("draft", None, ["ngram"],
                           "Speculative decoding without a draft model: ngram = prompt lookup "
                           "(the continuation of the last n-gram's earlier occurrence).")
_NUM_DRAFT = flags.DEFINE_integer("num_draft_tokens", 4,
                                  "Tokens the draft proposes per round (speculative decoding).")


def check() -> None:
  """One `error:` line and exit 2 for a bad combination of these flags."""
  if _DRAFT_WORKDIR.value and _DRAFT.value:
    entry.fail("--draft_workdir and --draft ngram: give one draft")
  if _NUM_DRAFT.value < 1:
    entry.fail(f"--num_draft_tokens={_NUM_DRAFT.value} must be >= 1")


def sampler_args() -> dict:
  """The keyword arguments of `Sampler.from_workdir` these flags set."""
  return dict(merge_lora=_MERGE_LORA.value, dtype=_DTYPE.value, quantize=_QUANTIZE.value,
              draft_workdir=_DRAFT_WORKDIR.value, draft=_DRAFT.value,
              num_draft_tokens=_NUM_DRAFT.value)
