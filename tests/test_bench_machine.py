"""experiments/bench/machine.py: the bf16 feature line the CPU benchmarks print, and the
resources a measured command used."""
import sys

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


# a child that touches 300 MiB, burns CPU for a while, prints, and exits 3
_CHILD = ("import sys, time; block = bytearray(300 * 2**20); "
          "end = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
          "print('out'); print('err', file=sys.stderr); sys.exit(3)")


def test_measure_process_reports_the_childs_peak_cpu_output_and_exit_code():
  usage = machine.measure_process([sys.executable, "-c", _CHILD])
  assert usage.returncode == 3
  assert usage.stdout == "out\n" and usage.stderr == "err\n"
  # the child's 300 MiB block plus an interpreter: its own peak, nothing of the launcher's
  assert 300 * 2**20 < usage.peak_rss_bytes < 400 * 2**20, usage.peak_rss_bytes / 2**20
  assert usage.cpu_seconds >= 0.5 and usage.seconds >= usage.cpu_seconds * 0.9
