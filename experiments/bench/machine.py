"""Facts about the machine a benchmark ran on, printed beside its figures, and the resources a
measured command used."""
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.machine()


def cpu_flags() -> set[str]:
  """The first CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      line = next(line for line in f if line.startswith("flags"))
  except (OSError, StopIteration):
    return set()
  return set(line.split(":", 1)[1].split())


def has_native_bf16(flags: set[str] | None = None) -> bool:
  """AVX512_BF16: XLA:CPU (jax >= 0.12) runs bf16 dots natively; without it they run in fp32."""
  return "avx512_bf16" in (cpu_flags() if flags is None else flags)


def bf16_features(flags: set[str] | None = None) -> str:
  """Whether XLA:CPU can run bf16 dots natively (AVX512_BF16) and whether the CPU has AMX
  tiles with bf16; without AVX512_BF16, bf16 compute is no faster than fp32 on the CPU."""
  flags = cpu_flags() if flags is None else flags
  avx = "yes" if has_native_bf16(flags) else "no"
  amx = "yes" if {"amx_bf16", "amx_tile"} <= flags else "no"
  return f"AVX512_BF16: {avx}, AMX: {amx}"


def describe() -> str:
  """CPU model and its bf16 features, e.g. 'AMD EPYC 7B13 (AVX512_BF16: no, AMX: no)'."""
  return f"{cpu_name()} ({bf16_features()})"


# A fresh, small Python starts the command and reads its children's usage: a child forked from
# a large parent (pytest, a benchmark holding jax) would count the parent's pages in its own
# peak RSS, since Linux keeps the pre-exec peak in ru_maxrss.
_LAUNCHER = ("import json, resource, subprocess, sys; rc = subprocess.run(sys.argv[2:]).returncode; "
             "u = resource.getrusage(resource.RUSAGE_CHILDREN); open(sys.argv[1], 'w').write("
             "json.dumps([rc, u.ru_maxrss * 1024, u.ru_utime + u.ru_stime]))")


@dataclasses.dataclass(frozen=True)
class ProcessUsage:
  returncode: int
  seconds: float  # wall time
  peak_rss_bytes: int  # of the largest process the command ran
  cpu_seconds: float  # of all its processes: on a shared machine, steadier than wall time
  stdout: str
  stderr: str


def measure_process(command: list[str], cwd=None, env: dict | None = None,
                    pin_core: int | None = None) -> ProcessUsage:
  """Runs `command` to its end (on one core if `pin_core` is given) and measures it."""
  with tempfile.TemporaryDirectory() as tmp:
    usage_file = os.path.join(tmp, "usage.json")
    full = [sys.executable, "-c", _LAUNCHER, usage_file, *map(str, command)]
    if pin_core is not None:
      full = ["taskset", "-c", str(pin_core), *full]
    start = time.perf_counter()
    proc = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    with open(usage_file) as f:
      returncode, peak, cpu = json.load(f)
  return ProcessUsage(returncode, seconds, peak, cpu, proc.stdout, proc.stderr)
