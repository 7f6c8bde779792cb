"""Sampler: a trained run's frozen parameters + tokenizer, generating text with a KV cache."""
import dataclasses
import math
import pathlib
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from treadle.data import streaming
from treadle.data import tokenizers
from treadle.infer import drafting
from treadle.infer import quantized
from treadle.model import decode
from treadle.model import lora
from treadle.model import quant
from treadle.model import speculative
from treadle.train import config as config_lib
from treadle.train import mesh as mesh_lib
from treadle.train import state as state_lib
from treadle.train import workdir as workdir_lib

_BUCKET = 64  # prompt and output lengths round up to this: few compilations, any length


@dataclasses.dataclass(frozen=True)
class Completion:
  prompt: str
  text: str              # what the generated ids add to the prompt's text, special tokens
                         # skipped, cut before a stop string
  token_ids: list[int]   # the ids generated until the end: an end-of-sequence id, or the id
                         # that completed a stop string, is the last
  finish_reason: str = "length"  # "stop" (end-of-sequence id or stop string) | "length"


def check_sampling_args(temperature: float, top_k: int, top_p: float, max_new_tokens: int):
  """One-line ValueErrors for arguments outside their domain."""
  if not math.isfinite(temperature) or temperature < 0:  # nan < 0 is False: test finiteness
    raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 = greedy)")
  if top_k < 0:
    raise ValueError(f"top_k={top_k} must be >= 0 (0 = off)")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must be in (0, 1]")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def prompt_slots(num_tokens: int, window: int) -> int:
  """Slots a prompt is left-padded into: its length rounded up to the bucket, at most the
  window (a longer prompt keeps its last `window` tokens). treadle-serve lays prompts out
  the same way, so its slides and sampling keys match `generate`'s."""
  return min(_round_up(num_tokens, _BUCKET), window)


class Sampler:
  """Generates from a trained run. Build with `Sampler.from_workdir(DIR)`."""

  def __init__(self, cfg: config_lib.RunConfig, tokenizer, params, mesh, step: int,
               dtype: str | None = None, draft: drafting.Draft | None = None,
               quantize: str | None = None):
    """`dtype` ("float32" or "bfloat16"; default: the run's compute dtype) is the dtype of
    the floating weights and of the computation: weights are cast once, here. `draft`
    (drafting.from_workdir or drafting.ngram) decodes speculatively: the same greedy text,
    the same sampling distribution, fewer target passes when the draft guesses well.
    `quantize` ("int8") stores the decoder's matrices as int8 with per-output-channel
    scales (model/quant.py), quantized from the float weights given, before any cast."""
    quant.check_mode(quantize)
    if dtype is not None:  # the model checks the dtype name
      cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compute_dtype=dtype))
    params = quant.for_inference(params, cfg.model, quantize,
                                 cfg.model.dtype if dtype is not None else None)
    self.cfg, self.tokenizer, self.params, self.mesh, self.step = cfg, tokenizer, params, mesh, step
    self.graphdef, _, _ = state_lib.model_graph(cfg.model)
    self.window = cfg.model.max_seq_len
    self.stop_ids = tokenizers.stop_token_ids(tokenizer)  # the model's end-of-sequence ids
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    self._prefill = jax.jit(self._prefill_fn, static_argnums=(3,),
                            in_shardings=(param_shardings, replicated, replicated, replicated,
                                          replicated, replicated, replicated),
                            out_shardings=replicated)
    self._decode = jax.jit(self._decode_fn, in_shardings=(param_shardings, replicated,
                                                           replicated, replicated),
                           out_shardings=replicated, donate_argnums=1)
    self.draft = draft
    self.acceptance = (0, 0)  # (accepted, proposed) draft tokens of the last generate/stream
    if draft is not None:
      drafting.check(draft, self.window)
      self._weights = (params, draft.params)
      self._prefill = jax.jit(self._spec_prefill_fn, static_argnums=(3,),
                              out_shardings=replicated)
      self._decode = jax.jit(self._spec_decode_fn, out_shardings=replicated, donate_argnums=1)
    else:
      self._weights = params

  @classmethod
  def from_workdir(cls, workdir, step: int | str | None = None,
                   mesh_shape: tuple[int, int, int] = (-1, 1, 1), rules: str = "dp",
                   devices=None, merge_lora: bool = False,
                   dtype: str | None = None, draft_workdir=None, draft: str | None = None,
                   num_draft_tokens: int = drafting.DEFAULT_NUM_DRAFT_TOKENS,
                   quantize: str | None = None) -> "Sampler":
    """Loads parameters only (step None = latest, "best", or a number) onto a mesh over
    `devices` (default all), sharded by the rule preset `rules`.

    A LoRA run samples through its adapters, or with `merge_lora` through base weights
    with the adapters folded in (one plain model, no adapter matmuls). `dtype`
    ("bfloat16": half the weight bytes each decode step reads; default: the run's compute
    dtype, float32 weights) casts the weights as they are read (after merging adapters).
    `quantize` ("int8"): see __init__; a run written by treadle-quantize loads as int8
    whatever `quantize` says.

    Speculative decoding: `draft_workdir` (a smaller run or imported model with this
    tokenizer; int8 if written by treadle-quantize or if `quantize` says so) or
    `draft="ngram"` (prompt lookup), proposing `num_draft_tokens` per round."""
    if draft_workdir is not None and draft is not None:
      raise ValueError("give a draft workdir or draft='ngram', not both")
    if draft is not None and draft != drafting.NGRAM:
      raise ValueError(f"draft={draft!r}: the only built-in draft is {drafting.NGRAM!r} "
                       "(a draft model is a draft workdir)")
    quant.check_mode(quantize)
    workdir = pathlib.Path(workdir)
    cfg = config_lib.from_run(workdir)
    workdir_lib.check_artifacts(workdir)  # tokenizer.json as training wrote it
    tokenizer = tokenizers.load(workdir)
    workdir_lib.check_vocab(workdir, tokenizer, cfg.model.vocab_size)
    mesh = mesh_lib.make_mesh(mesh_shape, devices)

    def shardings(abstract, specs):
      out = mesh_lib.param_shardings(specs, mesh, mesh_lib.rules(rules))
      mesh_lib.check_divisible(abstract, out)
      return out
    # the model config checks the name, before any tensor is read
    weights = dataclasses.replace(cfg.model, compute_dtype=dtype).dtype if dtype else None
    merging = merge_lora and cfg.model.lora_rank  # merges in float32; __init__ casts after
    if merging and quantized.recorded(workdir):
      raise ValueError(f"--merge_lora: {str(workdir)!r} is quantized (treadle-quantize); "
                       "its LoRA adapters stay float and unmerged")
    # quantizing reads float32 too: the int8 values come from the unrounded weights
    params, step = quantized.read_params(workdir, step, cfg.model, shardings,
                                         None if merging or quantize else weights)
    if merging:
      merged_cfg = dataclasses.replace(cfg.model, lora_rank=0)
      merged_shardings = mesh_lib.param_shardings(state_lib.model_graph(merged_cfg)[2], mesh,
                                                  mesh_lib.rules(rules))
      params = jax.jit(lambda p: lora.merge(p, cfg.model)[0],
                       out_shardings=merged_shardings)(params)
      cfg = dataclasses.replace(cfg, model=merged_cfg)
    spec = None
    if draft_workdir is not None:
      spec = drafting.from_workdir(draft_workdir, cfg.model, tokenizer, mesh, num_draft_tokens,
                                   dtype, quantize)
    elif draft is not None:
      spec = drafting.ngram(num_draft_tokens)
    return cls(cfg, tokenizer, params, mesh, step, dtype, spec, quantize=quantize)

  # -- jitted pieces ---------------------------------------------------------------------

  def _prefill_fn(self, params, tokens_BN, pad_B, prompt_len: int, key, sampling, first_row,
                  stop_ids_K):
    model = decode.merge(self.graphdef, params)
    return decode.prefill(model, tokens_BN, pad_B, prompt_len, key, sampling, first_row,
                          stop_ids_K)

  def _decode_fn(self, params, carry, num_steps, sampling):
    return decode.decode_steps(decode.merge(self.graphdef, params), carry, num_steps, sampling)

  def _models(self, weights):
    target = decode.merge(self.graphdef, weights[0])
    draft_model = None if self.draft.cfg is None else decode.merge(self.draft.graphdef, weights[1])
    return target, self.draft.spec(draft_model)

  def _spec_prefill_fn(self, weights, tokens_BN, pad_B, prompt_len: int, key, sampling,
                       first_row, stop_ids_K):
    target, spec = self._models(weights)
    return speculative.prefill(target, spec, tokens_BN, pad_B, prompt_len, key, sampling,
                               first_row, stop_ids_K)

  def _spec_decode_fn(self, weights, carry, num_steps, sampling):
    target, spec = self._models(weights)
    return speculative.decode_steps(target, spec, carry, num_steps, sampling)

  @property
  def weights_bytes(self) -> int:
    """Resident bytes of the model's parameters (int8 values and scales as stored)."""
    return quant.weights_bytes(self.params)

  @property
  def acceptance_rate(self) -> float | None:
    """Accepted / proposed draft tokens in the last generate or stream (None: no draft or
    nothing proposed)."""
    accepted, proposed = self.acceptance
    return accepted / proposed if proposed else None

  def _record(self, carry) -> None:
    if self.draft is not None:
      accepted, proposed = jax.device_get((carry.accepted_B.sum(), carry.proposed_B.sum()))
      self.acceptance = (int(accepted), int(proposed))

  # -- public API ------------------------------------------------------------------------

  def encode_prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
    if not prompts:
      raise ValueError("no prompt given")
    ids = []
    for p in prompts:
      if not p:
        raise ValueError("empty prompt: give at least one character")
      ids.append(self.tokenizer.encode(p))  # raises UnknownCharacterError (a ValueError)
    return ids

  def _start(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, first_row=0,
             ignore_eos=False):
    check_sampling_args(temperature, top_k, top_p, max_new_tokens)
    ids = self.encode_prompts(prompts)
    # prompts longer than the window keep their last `window` tokens
    prompt_len = prompt_slots(max(len(i) for i in ids), self.window)
    total = prompt_len + _round_up(max_new_tokens, _BUCKET)
    tokens, pad = decode.left_pad(ids, total, prompt_len)
    sampling = decode.SamplingParams(jnp.float32(temperature), jnp.int32(top_k),
                                     jnp.float32(top_p))
    stop_ids = decode.stop_ids(() if ignore_eos else self.stop_ids)
    carry = self._prefill(self._weights, tokens, pad, prompt_len, jax.random.key(seed),
                          sampling, jnp.int32(first_row), stop_ids)
    return carry, sampling, prompt_len, ids

  def compile(self, prompts: Sequence[str], max_new_tokens: int) -> None:
    """Compiles (and runs once, zero decode steps) for these prompt and output lengths."""
    carry, sampling, _, _ = self._start(list(prompts), max_new_tokens, 0.0, 0, 1.0, 0)
    jax.block_until_ready(self._decode(self._weights, carry, jnp.int32(0), sampling))

  def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 200,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop: Sequence[str] = (), ignore_eos: bool = False,
               skip_special_tokens: bool = True) -> list[Completion]:
    """Samples a continuation of each prompt (batched); same seed, same text. Prompt i
    draws with its own key (decode.row_keys), so it samples what `stream(prompts[i],
    seed=seed, row=i)` streams. A continuation ends at the model's end-of-sequence ids
    (unless `ignore_eos`), at a stop string or after `max_new_tokens`."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    carry, sampling, prompt_len, ids = self._start(prompts, max_new_tokens, temperature, top_k,
                                                   top_p, seed, ignore_eos=ignore_eos)
    carry = self._decode(self._weights, carry, jnp.int32(max_new_tokens - 1), sampling)
    self._record(carry)
    new = np.asarray(jax.device_get(carry.tokens_BN))[:, prompt_len:prompt_len + max_new_tokens]
    out = []
    for prompt, prompt_ids, row in zip(prompts, ids, new):
      text = self._text(prompt_ids, max_new_tokens, stop, ignore_eos, skip_special_tokens)
      text.add_all(row)
      out.append(Completion(prompt, text.text, row[:text.generated].tolist(), text.finish_reason))
    return out

  def _text(self, prompt_ids, max_new_tokens, stop, ignore_eos, skip_special_tokens):
    return streaming.TextStream(self.tokenizer, prompt_ids, max_new_tokens, stop,
                                () if ignore_eos else self.stop_ids, skip_special_tokens)

  def stream(self, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
             chunk_tokens: int = 16, row: int = 0, ignore_eos: bool = False,
             skip_special_tokens: bool = True) -> Iterator[str]:
    """Yields the continuation of one prompt piece by piece as it is generated; the pieces
    concatenate to `generate(prompts, ...)[row].text` for the same arguments when
    prompts[row] is this prompt (same padded prompt length: prompts up to 64 tokens, or
    all longer than the window). Arguments are checked (and the prompt prefilled) at the
    call, not at the first `next()`."""
    carry, sampling, prompt_len, ids = self._start([prompt], max_new_tokens, temperature, top_k,
                                                   top_p, seed, row, ignore_eos)
    text = self._text(ids[0], max_new_tokens, stop, ignore_eos, skip_special_tokens)
    return self._stream(carry, sampling, prompt_len, text, chunk_tokens)

  def _stream(self, carry, sampling, prompt_len, text: streaming.TextStream, chunk_tokens):
    sent, produced = 0, 1  # characters yielded; ids sampled so far
    while True:
      new = np.asarray(jax.device_get(carry.tokens_BN))[0, prompt_len:prompt_len + produced]
      text.add_all(new[text.generated:])
      end = text.safe_length()
      if end > sent:
        yield text.text[sent:end]
        sent = end
      if text.done:
        return
      steps = min(chunk_tokens, text.max_tokens - produced)
      carry = self._decode(self._weights, carry, jnp.int32(steps), sampling)
      self._record(carry)
      produced += steps
