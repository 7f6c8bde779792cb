"""treadle-sample: print text sampled from a trained run's checkpoint.

  treadle-sample --workdir DIR --prompt "ROMEO:" --max_new_tokens 500 --temperature 0.8 \
      --top_k 200 --num_samples 2 --seed 0 [--top_p 0.95] [--step N|best] [--stream] [--json]
      [--dtype bfloat16] [--quantize int8] [--stop TEXT] [--ignore_eos]
      [--noskip_special_tokens] [--draft_workdir D | --draft ngram] [--num_draft_tokens 4]

Speculative decoding: --draft_workdir (a smaller run or imported model with the same
tokenizer) or --draft ngram (prompt lookup) proposes --num_draft_tokens tokens a round for the
target to check in one pass; greedy text is identical, sampled text has the same distribution,
and --json reports the acceptance_rate.

A sample ends at the model's end-of-sequence ids (those of config.json, generation_config.json
and the chat template's end of turn, for an imported model), at a --stop string or after
--max_new_tokens; its text is what its ids add to the prompt's text, special tokens skipped.

Bad input (empty prompt, characters the tokenizer cannot encode, a temperature that is
negative or not finite, top_k < 0, top_p outside (0, 1], a --mesh_shape that is not three
integers fitting the devices, an unknown --rules, no checkpoint, a tokenizer.json edited after
training or not the model's size) is a one-line error with exit code 2.
"""
import json
import time

from absl import flags

from treadle.common import entry
from treadle.infer import load_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by treadle-train.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt text (repeatable). Default: newline.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "File whose whole text is one prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 500, "Tokens to generate per sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 200, "Keep the k most likely tokens; 0 = off.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1]; 1 = off.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Same seed, same text.")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step: a number, 'best' or latest (default).")
_STREAM = flags.DEFINE_bool("stream", False, "Print text as it is generated (prompt by prompt).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object with samples, token counts, speed.")
_STOP = flags.DEFINE_multi_string("stop", [], "End a sample before this text (repeatable).")
_IGNORE_EOS = flags.DEFINE_bool("ignore_eos", False,
                                "Generate past end-of-sequence ids up to --max_new_tokens "
                                "(benchmarks).")
_SKIP_SPECIAL = flags.DEFINE_bool("skip_special_tokens", True,
                                  "Leave special tokens (<s>, <|im_end|>, ...) out of the text.")
_MESH = flags.DEFINE_string("mesh_shape", "-1,1,1", "Mesh data,fsdp,tensor for the parameters.")
_RULES = flags.DEFINE_string("rules", "dp", "Parameter sharding preset (dp, fsdp, fsdp_tp).")
def _prompts() -> list[str]:
  if _PROMPT_FILE.value:
    try:
      with open(_PROMPT_FILE.value, encoding="utf-8") as f:
        prompts = [f.read()]
    except (OSError, UnicodeDecodeError) as e:
      entry.fail(f"--prompt_file {_PROMPT_FILE.value!r}: {e}")
  else:
    prompts = _PROMPT.value if _PROMPT.value is not None else ["\n"]
  return [p for p in prompts for _ in range(_NUM_SAMPLES.value)]


def _print_samples(sampler, prompts, args) -> None:
  if _STREAM.value and not _JSON.value:
    for i, prompt in enumerate(prompts):
      print(prompt, end="", flush=True)
      # row i: the key the batch path gives sample i, so --stream prints the same text
      for piece in sampler.stream(prompt, seed=_SEED.value, row=i, **args):
        print(piece, end="", flush=True)
      print("\n---------------", flush=True)
    return
  if _JSON.value:
    sampler.compile(prompts, args["max_new_tokens"])  # tokens/second excludes compilation
  start = time.perf_counter()
  completions = sampler.generate(prompts, seed=_SEED.value, **args)
  seconds = time.perf_counter() - start
  if _JSON.value:
    new_tokens = sum(len(c.token_ids) for c in completions)
    print(json.dumps({"step": sampler.step, "seconds": seconds, "new_tokens": new_tokens,
                      "tokens_per_second": new_tokens / seconds,
                      "weights_bytes": sampler.weights_bytes,
                      "acceptance_rate": sampler.acceptance_rate,
                      "samples": [{"prompt": c.prompt, "text": c.text,
                                   "num_tokens": len(c.token_ids),
                                   "finish_reason": c.finish_reason} for c in completions]}))
    return
  for c in completions:
    print(c.prompt + c.text)
    print("---------------")


def _mesh_shape() -> tuple[int, int, int]:
  """--mesh_shape as three integers; whether they fit the devices is checked once jax runs."""
  try:
    shape = tuple(int(x) for x in _MESH.value.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3:
    entry.fail(f"--mesh_shape={_MESH.value!r} must be three comma-separated integers "
               "data,fsdp,tensor (-1: the remaining devices), e.g. -1,1,1")
  return shape


def _check_placement(shape: tuple[int, int, int]) -> None:
  """--mesh_shape against the devices present and --rules against the presets, as flags."""
  import jax
  from treadle.train import mesh as mesh_lib
  try:
    mesh_lib.resolve_shape(shape, jax.device_count())
  except ValueError as e:
    entry.fail(f"--mesh_shape={_MESH.value!r}: {e}")
  if _RULES.value not in mesh_lib.RULES:
    entry.fail(f"--rules={_RULES.value!r} must be one of {', '.join(mesh_lib.RULES)}")


def main(argv) -> None:
  del argv
  if not _WORKDIR.value:
    entry.fail("--workdir is required")
  if _NUM_SAMPLES.value < 1:
    entry.fail(f"--num_samples={_NUM_SAMPLES.value} must be positive")
  load_flags.check()
  shape = _mesh_shape()
  from treadle.infer import sampler as sampler_lib  # after flag parsing: a bad flag never starts jax
  from treadle.common import logs
  logs.setup()
  _check_placement(shape)
  with entry.one_line_errors():
    args = dict(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                top_k=_TOP_K.value, top_p=_TOP_P.value)
    sampler_lib.check_sampling_args(**args)
    args.update(stop=_STOP.value, ignore_eos=_IGNORE_EOS.value,
                skip_special_tokens=_SKIP_SPECIAL.value)
    prompts = _prompts()
    sampler = sampler_lib.Sampler.from_workdir(
        _WORKDIR.value, entry.checkpoint_step(_STEP.value), shape, _RULES.value,
        **load_flags.sampler_args())
    sampler.encode_prompts(prompts)  # validate before generating anything
    _print_samples(sampler, prompts, args)


def run() -> None:
  entry.run(main)


if __name__ == "__main__":
  run()
