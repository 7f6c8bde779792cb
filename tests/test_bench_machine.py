"""experiments/bench/machine.py: the bf16 feature line the CPU benchmarks print."""
import pytest

from experiments.bench import machine


@pytest.mark.parametrize("flags,line", [
    ({"avx2", "fma"}, "AVX512_BF16: no, AMX: no"),                            # Zen 3
    ({"avx512f", "avx512_bf16"}, "AVX512_BF16: yes, AMX: no"),               # Zen 4
    ({"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}, "AVX512_BF16: yes, AMX: yes"),
    ({"amx_tile"}, "AVX512_BF16: no, AMX: no"),  # tiles without bf16 support: no bf16 AMX
])
def test_bf16_features_read_the_flags(flags, line):
  assert machine.bf16_features(flags) == line


def test_describe_names_the_cpu_and_its_features():
  described = machine.describe()
  assert described.startswith(machine.cpu_name())
  assert described.endswith(f"({machine.bf16_features()})")
