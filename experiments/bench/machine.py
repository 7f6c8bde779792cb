"""Facts about the machine a benchmark ran on, printed beside its figures."""
import platform


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
