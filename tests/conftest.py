"""Test setup: 8 simulated CPU devices (before jax is imported) and shared fixtures.

TREADLE_TEST_DEVICES=native (experiments/bench/gpu_check.sh) runs on the machine's own
devices instead (a GPU or TPU): nothing is simulated, matmuls run in full fp32 (the tests'
tolerances assume it; GPUs default to TF32), and a test marked `devices(n)` that needs more
devices than present is skipped with a reason saying so, which the script reports as not run.
"""
import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

NATIVE_DEVICES = os.environ.get("TREADLE_TEST_DEVICES", "") == "native"
# The tests compile many small programs and run each briefly: LLVM's optimisation of the CPU
# code is much of each compile and buys nothing here (measured on a Zen 1 EPYC: the tiny train
# command 12.2 -> 9.6 s, tests/model/test_options.py 161 -> 117 s). XLA's HLO passes still
# run, so the programs tested are the ones users compile, with less tuned machine code.
FAST_COMPILE = "" if NATIVE_DEVICES else "--xla_backend_optimization_level=0"
if NATIVE_DEVICES:
  os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
else:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {FAST_COMPILE}"
                             " --xla_force_host_platform_device_count=8").strip()
# One persistent compilation cache for the whole session, inherited by every CLI subprocess:
# the many end-to-end runs of the same tiny configs then compile each program once (the
# whole tiny train command: 18.5 s -> ~10 s warm). Fresh per session: no entry outlives the code.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="treadle-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Tokenized corpora and fitted tokenizers of runs that name no data.cache_dir: one directory
# for the session (shared by its runs), not the user's ~/.cache/treadle (they piled up there).
if "TREADLE_CACHE" not in os.environ:
  os.environ["TREADLE_CACHE"] = tempfile.mkdtemp(prefix="treadle-test-cache-")
  atexit.register(shutil.rmtree, os.environ["TREADLE_CACHE"], ignore_errors=True)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def pytest_configure(config):
  config.addinivalue_line("markers", "devices(n): needs n devices (8 simulated CPU devices "
                          "by default; with TREADLE_TEST_DEVICES=native skipped when fewer)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Before any fixture runs: on native devices, a test needing more devices than present
  is skipped with a reason that names both counts (the default 8 CPU devices run them all)."""
  marker = item.get_closest_marker("devices")
  if marker is None or not NATIVE_DEVICES:
    return
  import jax
  needed, present = marker.args[0], jax.device_count()
  if present < needed:
    pytest.skip(f"needs {needed} devices, {present} {jax.devices()[0].platform} present")


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> pathlib.Path:
  """tinyshakespeare when ../shared has it; otherwise a generated varied text."""
  if SHARED_TEXT.exists():
    return SHARED_TEXT
  import random
  import string
  rng = random.Random(0)
  words = ("the king my lord good night sweet prince what say you to this and so farewell "
           "speak now or hold thy peace the sea is calm tonight o romeo wherefore art thou").split()
  speakers = ["ROMEO", "JULIET", "KING HENRY", "First Citizen", "MENENIUS"]
  lines = [string.printable]  # every printable ASCII character is in the vocabulary
  for _ in range(12000):
    line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize()
    lines += [f"{rng.choice(speakers)}:", line + rng.choice(".,;!?") , ""]
  path = tmp_path_factory.mktemp("text") / "input.txt"
  path.write_text("\n".join(lines))
  return path


def child_env(**extra: str) -> dict[str, str]:
  """The environment of a child process that picks its own device layout (no simulated device
  count) and compiles as the tests do; `extra` is set on top (XLA_FLAGS: added to the fast
  compile flag)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  xla_flags = f"{FAST_COMPILE} {extra.pop('XLA_FLAGS', '')}".strip()
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  return {**env, **extra}


def metric_rows(workdir) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl as treadle reads them (`train.metrics.read`), asserting
  that the file holds each step's rows once, as the trainer leaves it: a resumed run first
  drops the rows past its checkpoint, so `read` must have had no repeated rows to drop."""
  from treadle.train import metrics
  rows = metrics.read(workdir)
  path = pathlib.Path(workdir) / metrics.FILENAME
  lines = path.read_text().count("\n")  # whole lines: a torn last one is not a row either
  assert len(rows) == lines, f"{path}: {lines - len(rows)} rows repeat a step"
  return rows


def run_cli(module: str, *args, timeout: int = 300, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
  """Runs a treadle entry point in a fresh process (its own device count and jax state)."""
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=child_env(**(env or {})))
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
  return proc
