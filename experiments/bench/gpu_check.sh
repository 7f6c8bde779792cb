#!/usr/bin/env bash
# One-GPU check of treadle (about 10 minutes): installs the newest jax with its CUDA extra
# and treadle[test] into a fresh venv, runs the cache-vs-recompute and sharding-equality
# tests on the GPU, trains a GPT-2-124M-sized model 50 steps (tokens/s, MFU) and decodes
# at batch 1 and 64 (tokens/s). Run from anywhere:
#
#   bash experiments/bench/gpu_check.sh                    # fresh venv .venv-gpu-check
#   bash experiments/bench/gpu_check.sh --skip-install     # the current `python` as it is
#   bash experiments/bench/gpu_check.sh --skip-install --tiny   # CPU smoke run (about a minute)
#
# Options: --extra cuda12|cuda13|tpu|cpu (default: cuda13 when the NVIDIA driver is >= 580,
#   which CUDA 13 needs, else cuda12; cpu tries the install path on a CPU machine);
#   --python PY (makes the venv; default python3); --venv DIR (default .venv-gpu-check);
#   --wheels DIR (offline: install only from the wheels in DIR).
# Exit status: 0 when every test that ran passed and the benchmarks finished.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SKIP_INSTALL=0 TINY=0 EXTRA="" BASE_PYTHON=python3 VENV="$REPO/.venv-gpu-check" WHEELS=""

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --skip-install) SKIP_INSTALL=1 ;;
    --tiny) TINY=1 ;;
    --extra) EXTRA="${2:?--extra needs a value}"; shift ;;
    --python) BASE_PYTHON="${2:?--python needs a value}"; shift ;;
    --venv) VENV="${2:?--venv needs a value}"; shift ;;
    --wheels) WHEELS="${2:?--wheels needs a value}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
case "$EXTRA" in
  ""|cuda12|cuda13|tpu|cpu) ;;
  *) die "--extra must be cuda12, cuda13, tpu or cpu, not '$EXTRA'" ;;
esac
[[ -z "$WHEELS" || -d "$WHEELS" ]] || die "--wheels '$WHEELS' is not a directory"

cuda_extra() {
  # jax's cuda13 wheels need an NVIDIA driver >= 580; cuda12 runs on >= 525
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: pass --extra tpu, or --skip-install"
  local major
  major="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1 | cut -d. -f1)"
  if [[ "$major" -ge 580 ]]; then echo cuda13; else echo cuda12; fi
}

install() {
  [[ -n "$EXTRA" ]] || EXTRA="$(cuda_extra)"
  echo "== install: newest jax[$EXTRA] and treadle[test] into $VENV"
  "$BASE_PYTHON" -m venv "$VENV"
  local minor constraints
  minor="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  # the lock file's tested pins, except jax's own packages: the newest jax is the point
  constraints="$(mktemp)"
  if [[ -f "$REPO/requirements/lock-py$minor.txt" ]]; then
    grep -Ev '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|libtpu)==' \
      "$REPO/requirements/lock-py$minor.txt" > "$constraints"
  fi
  local offline=()
  [[ -z "$WHEELS" ]] || offline=(--no-index --find-links "$WHEELS")
  "$VENV/bin/pip" install -q "${offline[@]}" -c "$constraints" -U "jax[$EXTRA]" -e "$REPO[test]"
  rm -f "$constraints"
  PYTHON="$VENV/bin/python"
}

START=$SECONDS
if [[ "$SKIP_INSTALL" == 1 ]]; then
  PYTHON="$(command -v python || command -v python3)" || die "no python on PATH"
else
  install
fi
SIZE_FLAG=()
[[ "$TINY" == 0 ]] || SIZE_FLAG=(--tiny)
cd "$REPO"
export PYTHONUNBUFFERED=1
"$PYTHON" -c 'import treadle.model' 2>/dev/null \
  || die "$PYTHON cannot import treadle (install it, or drop --skip-install)"

echo "== tests on the device"
TESTS_RC=0
"$PYTHON" -m experiments.bench.gpu_check tests "${SIZE_FLAG[@]}" || TESTS_RC=$?
echo "== training and decoding"
BENCH_RC=0
"$PYTHON" -m experiments.bench.gpu_check bench "${SIZE_FLAG[@]}" || BENCH_RC=$?
echo "== done in $((SECONDS - START)) s: tests exit $TESTS_RC, benchmarks exit $BENCH_RC"
[[ "$TESTS_RC" == 0 && "$BENCH_RC" == 0 ]]
