"""experiments/bench/gpu_check.sh on the CPU (--tiny, --skip-install) prints every figure."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from treadle.train import perf
from tests.conftest import child_env

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "bench" / "gpu_check.sh"


def _run_script(*args: str) -> subprocess.CompletedProcess:
  # one CPU device, as on a one-GPU machine: no simulated devices from conftest
  env = child_env()
  env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
  return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.processes
def test_tiny_run_prints_every_figure():
  proc = _run_script("--skip-install", "--tiny")
  out = proc.stdout
  assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
  tokens_per_second = float(re.search(r"^train tokens/s: ([\d,]+)$", out, re.M)[1].replace(",", ""))
  assert tokens_per_second > 0
  assert re.search(r"^MFU: unknown \(.*'cpu'\)$", out, re.M), out
  for batch in (1, 64):
    rate = re.search(rf"^decode batch {batch}: ([\d,.]+) tokens/s", out, re.M)
    assert rate and float(rate[1].replace(",", "")) > 0, out
  losses = re.search(r"loss ([\d.]+) -> ([\d.]+)", out)
  assert float(losses[2]) < float(losses[1])  # the Zipf data is learnable: training moved
  # the tests step: the one-device parametrisation passed, the 8-device one is reported
  assert "tests on the device: 1 passed, 0 failed, 1 not run" in out
  assert re.search(r"NOT RUN .*\[True\]: needs 8 devices, 1 cpu present", out)
  assert "tests: PASSED, some NOT RUN" in out


def test_unknown_option_is_a_one_line_error():
  proc = _run_script("--fast")
  assert proc.returncode == 2
  assert proc.stderr.strip() == "gpu_check: unknown option '--fast' (see --help)"


@pytest.mark.parametrize("device_kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L4", 121e12), ("NVIDIA L40S", None), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12), ("cpu", 370e9), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_table_picks_the_most_specific_entry(device_kind, peak):
  assert perf.peak_flops(device_kind, "bfloat16") == peak
