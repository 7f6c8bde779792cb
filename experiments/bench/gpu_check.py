"""Accelerator check behind gpu_check.sh: correctness tests on the device, then training
tokens/s and MFU of a GPT-2-124M-sized model, then decode tokens/s at batch 1 and 64.

  python -m experiments.bench.gpu_check tests [--tiny]   # the tests on the native devices
  python -m experiments.bench.gpu_check bench [--tiny]   # train + decode figures

--tiny shrinks the model and the step counts so the whole check runs on a CPU in seconds
(tests/test_gpu_check.py); its figures mean nothing beyond "every line is printed".
"""
import argparse
import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[2]

@dataclasses.dataclass(frozen=True)
class Sizes:
  num_layers: int
  embed_dim: int
  num_heads: int
  seq_len: int
  vocab_size: int
  batch_size: int
  train_steps: int
  warmup_steps: int     # untimed steps after the compiling one
  decode_tokens: int    # new tokens per decode run


GPT2_124M = Sizes(12, 768, 12, 1024, 50304, 16, 50, 4, 512)
TINY = Sizes(2, 64, 4, 64, 256, 4, 6, 1, 16)
DECODE_BATCHES = (1, 64)
# the cache-vs-recompute decode tests (the decode file's others are about sampling
# statistics and XLA:CPU's HLO) and every sharding-equality test
DECODE = "tests/model/test_decode.py::"
TESTS = [DECODE + "test_cached_greedy_equals_full_recompute_within_the_window",
         DECODE + "test_cached_logits_match_full_forward",
         DECODE + "test_generation_past_the_window_slides",
         DECODE + "test_sharded_params_decode_the_same_tokens",
         "tests/train/test_sharding.py"]
# --tiny's quick subset: one parametrisation runs on one device, the other needs 8
TINY_TESTS = [DECODE + "test_cached_logits_match_full_forward"]


def run_tests(tiny: bool) -> int:
  """pytest on the native devices (conftest's TREADLE_TEST_DEVICES=native); prints a
  summary in which tests needing more devices than present count as not run."""
  report = pathlib.Path(tempfile.mkdtemp()) / "report.xml"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no simulated devices
  env["TREADLE_TEST_DEVICES"] = "native"
  cmd = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-rs", "--durations=0",
         f"--junitxml={report}", *(TINY_TESTS if tiny else TESTS)]
  print("$", " ".join(cmd[1:]), flush=True)
  returncode = subprocess.run(cmd, cwd=REPO, env=env).returncode
  if not report.exists():
    print(f"tests: pytest exited {returncode} without a report: FAILED")
    return 1
  passed, failed, not_run = summarize(report)
  print(f"tests on the device: {len(passed)} passed, {len(failed)} failed, "
        f"{len(not_run)} not run")
  for name, reason in not_run:
    print(f"  NOT RUN {name}: {reason}")
  for name in failed:
    print(f"  FAILED {name}")
  ok = not failed and returncode == 0
  print("tests: " + ("FAILED" if not ok else "PASSED, some NOT RUN (see above)" if not_run
                     else "PASSED"))
  return 0 if ok else 1


def summarize(report: pathlib.Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
  """(passed, failed, [(not run, reason)]) test names from a JUnit XML report."""
  passed, failed, not_run = [], [], []
  for case in ET.parse(report).getroot().iter("testcase"):
    name = f"{case.get('classname', '')}::{case.get('name', '')}"
    skipped = case.find("skipped")
    if case.find("failure") is not None or case.find("error") is not None:
      failed.append(name)
    elif skipped is not None:
      not_run.append((name, skipped.get("message", "skipped")))
    else:
      passed.append(name)
  return passed, failed, not_run


def model_config(sizes: Sizes, compute_dtype: str):
  from treadle.train import config as config_lib
  return config_lib.section(
      "model", vocab_size=sizes.vocab_size, max_seq_len=sizes.seq_len,
      num_layers=sizes.num_layers, num_heads=sizes.num_heads, embed_dim=sizes.embed_dim,
      compute_dtype=compute_dtype, dropout=0.0)


def zipf_batches(sizes: Sizes, count: int, seed: int = 0) -> list[dict]:
  """Generated token batches with Zipf-like frequencies: the loss must fall from ln(V)
  towards their entropy, so a step that does not train shows in the printed losses."""
  import numpy as np
  rng = np.random.default_rng(seed)
  probs = 1.0 / np.arange(1, sizes.vocab_size + 1)
  shape = (count, sizes.batch_size, sizes.seq_len + 1)
  tokens = rng.choice(sizes.vocab_size, size=shape, p=probs / probs.sum()).astype(np.int32)
  return [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]


def train_figures(sizes: Sizes):
  """bf16 compute, fp32 master weights (params stay fp32), data-parallel over all devices;
  returns the trained parameters."""
  import jax
  from treadle.train import config as config_lib
  from treadle.train import mesh as mesh_lib
  from treadle.train import optimizer
  from treadle.train import state as state_lib
  from treadle.train import step as step_lib
  from treadle.train.tasks import lm

  model = model_config(sizes, "bfloat16")
  opt = config_lib.section("optimizer", warmup_steps=min(10, sizes.train_steps - 1))
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  rules = mesh_lib.rules("dp")
  tx = optimizer.build(opt, sizes.train_steps)
  shardings = state_lib.shardings(model, tx, mesh, rules)
  state = state_lib.create(model, tx, 0, shardings)
  graphdef, _, _ = state_lib.model_graph(model)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  train_step, _ = step_lib.compile_steps(lm.LanguageModeling(), graphdef, tx,
                                         optimizer.schedule(opt, sizes.train_steps), 1, False,
                                         rules, shardings, batch_sharding)
  batches = [{k: jax.device_put(v, batch_sharding) for k, v in b.items()}
             for b in zipf_batches(sizes, 8)]
  losses = []

  def steps(first: int, count: int):
    nonlocal state
    start = time.perf_counter()
    for i in range(first, first + count):
      state, metrics = train_step(state, batches[i % len(batches)])
      losses.append(metrics["train_loss"])
    jax.block_until_ready(state)
    return time.perf_counter() - start

  compile_s = steps(0, 1)
  steps(1, sizes.warmup_steps)
  timed = sizes.train_steps - 1 - sizes.warmup_steps
  seconds = steps(1 + sizes.warmup_steps, timed)
  report_training(model, sizes, timed, seconds, compile_s, [float(x) for x in losses])
  return state.params


def report_training(model, sizes: Sizes, timed: int, seconds: float, compile_s: float,
                    losses: list[float]) -> None:
  import jax
  from treadle.train import perf
  tokens_per_second = timed * sizes.batch_size * sizes.seq_len / seconds
  flops_per_token = perf.flops_per_token(model, sizes.seq_len)  # 6N + attention
  achieved = tokens_per_second * flops_per_token
  device = jax.devices()[0]
  peak = None if device.platform == "cpu" else perf.peak_flops(device.device_kind, "bfloat16")
  print(f"train: {perf.num_params(model) / 1e6:.1f}M params, {model.num_layers}L/"
        f"{model.embed_dim}d/{model.num_heads}H, T={sizes.seq_len}, batch {sizes.batch_size}, "
        f"bf16 compute, fp32 weights, {jax.device_count()} device(s)")
  print(f"train: {sizes.train_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"first step (compile) {compile_s:.1f} s, {seconds / timed * 1e3:.1f} ms/step over "
        f"the last {timed}")
  print(f"train tokens/s: {tokens_per_second:,.0f}")
  print(f"train achieved FLOP/s: {achieved:.4g} ({flops_per_token:.4g} FLOPs/token)")
  if peak is None:
    print(f"MFU: unknown (no bf16 peak in the table for device kind {device.device_kind!r})")
  else:
    total_peak = peak * jax.device_count()
    print(f"MFU: {achieved / total_peak:.1%} of {jax.device_count()} x {peak / 1e12:.0f} "
          f"TFLOP/s bf16 peak ({device.device_kind})")


def decode_figures(sizes: Sizes, params) -> None:
  """Tokens/s of cached decoding at each batch size (prefill included, compile excluded),
  from 1-token prompts padded to the sampler's 64-slot bucket, with the trained params."""
  import jax
  import jax.numpy as jnp
  from treadle.model import decode as decode_lib
  from treadle.train import state as state_lib

  model = model_config(sizes, "bfloat16")
  graphdef, _, _ = state_lib.model_graph(model)
  sampling = decode_lib.SamplingParams(jnp.float32(0.8), jnp.int32(200), jnp.float32(1.0))
  prompt_len = 64  # infer/sampler.py's bucket
  total_len = prompt_len + -(-sizes.decode_tokens // 64) * 64

  @jax.jit
  def generate(params, tokens, pad, num_steps, key):
    model = decode_lib.merge(graphdef, params)
    carry = decode_lib.prefill(model, tokens, pad, prompt_len, key, sampling)
    return decode_lib.decode_steps(model, carry, num_steps, sampling)

  for batch in DECODE_BATCHES:
    tokens, pad = decode_lib.left_pad([[1]] * batch, total_len, prompt_len)
    for new_tokens in (2, sizes.decode_tokens):  # the first run compiles (traced count)
      start = time.perf_counter()
      carry = generate(params, tokens, pad, jnp.int32(new_tokens - 1), jax.random.key(batch))
      jax.block_until_ready(carry)
      seconds = time.perf_counter() - start
    if int(carry.cur) != prompt_len + sizes.decode_tokens - 1:
      raise RuntimeError(f"decode batch {batch}: stopped at slot {int(carry.cur)}")
    print(f"decode batch {batch}: {batch * sizes.decode_tokens / seconds:,.1f} tokens/s "
          f"({sizes.decode_tokens} new tokens per row, {seconds * 1e3:.0f} ms)")


def bench(tiny: bool) -> int:
  import jax
  sizes = TINY if tiny else GPT2_124M
  device = jax.devices()[0]
  print(f"device: {jax.device_count()} x {device.device_kind} ({device.platform}), "
        f"jax {jax.__version__}, python {sys.version.split()[0]}")
  if device.platform == "cpu" and not tiny:
    print("WARNING: jax found no accelerator; these figures are the CPU's")
  decode_figures(sizes, train_figures(sizes))
  return 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("part", choices=["tests", "bench"])
  parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU run")
  args = parser.parse_args()
  return run_tests(args.tiny) if args.part == "tests" else bench(args.tiny)


if __name__ == "__main__":
  sys.exit(main())
