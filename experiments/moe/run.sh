#!/usr/bin/env bash
# The MoE experiments of experiments/moe/README.md, one training at a time (shared cores).
#
#   bash experiments/moe/run.sh [OUT [PART ...]]    (default OUT: runs/moe; PART: quality
#                                                   balance parallel bench; default all four)
#
# quality:  dense (configs/shakespeare_char_cpu.py) then MoE (configs/moe_char_cpu.py), 2000
#           steps each, seeds 1337, 0, 1: OUT/{dense,moe}_s{seed}
# balance:  MoE without the load-balancing loss, seed 1337: OUT/moe_noaux_s1337
# parallel: MoE on 8 simulated CPU devices, batch 16, experts split over mesh.expert=8
#           (OUT/ep8) vs replicated with mesh.data=8 (OUT/dp8), PARALLEL_STEPS steps each,
#           then their step times interleaved in one process (step_ratio.py: OUT/parallel_ratio.txt)
# bench:    step_ratio.py (MoE / dense step time, interleaved in one process) and
#           bench_dispatch.py (collectives vs XLA dispatch), printed to OUT/*.txt
# Whole-command wall seconds go to OUT/times.txt. A run directory that exists is resumed by
# treadle-train; remove OUT first for fresh runs. PYTHON and TREADLE_TRAIN override the venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/moe
OUT=${1:-runs/moe}
shift || true
PARTS=${*:-quality balance parallel bench}
PY=${PYTHON:-.venv/bin/python}
TRAIN=${TREADLE_TRAIN:-.venv/bin/treadle-train}
TEXT=../shared/data/tinyshakespeare/input.txt
DATA=--config.data.path=$TEXT
PARALLEL_STEPS=${PARALLEL_STEPS:-100}
mkdir -p "$OUT"

stage() {  # NAME COMMAND...: output in OUT/NAME.log, whole-command seconds in OUT/times.txt
  local name=$1 start end
  shift
  start=$EPOCHREALTIME
  "$@" > "$OUT/$name.log" 2>&1 || { echo "error: stage $name failed, see $OUT/$name.log" >&2; exit 1; }
  end=$EPOCHREALTIME
  awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "%s %.1f\n", n, b - a }' \
    | tee -a "$OUT/times.txt"
}

train() {  # NAME CONFIG ARGS...
  local name=$1 config=$2
  shift 2
  stage "$name" "$TRAIN" --config "$config" --workdir "$OUT/$name" "$DATA" "$@"
}

for part in $PARTS; do
  case $part in
    quality)
      for seed in 1337 0 1; do  # back to back: load on the shared cores falls on both alike
        train "dense_s$seed" configs/shakespeare_char_cpu.py --config.train.seed=$seed
        train "moe_s$seed" configs/moe_char_cpu.py --config.train.seed=$seed
      done ;;
    balance)
      train moe_noaux_s1337 configs/moe_char_cpu.py --config.model.router_aux_loss_coef=0 ;;
    parallel)
      for mesh in "ep8 1 8" "dp8 8 1"; do
        set -- $mesh
        train "$1" configs/moe_char_cpu.py --config.mesh.cpu_devices=8 --config.mesh.data="$2" \
          --config.mesh.expert="$3" --config.train.batch_size=16 \
          --config.train.num_steps="$PARALLEL_STEPS" --config.train.eval_every="$PARALLEL_STEPS"
      done
      stage parallel_ratio "$PY" "$HERE/step_ratio.py" --data_path="$TEXT" \
        --a configs/moe_char_cpu.py --b configs/moe_char_cpu.py --set mesh.cpu_devices=8 \
        --set train.batch_size=16 --a_set mesh.data=8 --a_set mesh.expert=1 \
        --b_set mesh.data=1 --b_set mesh.expert=8 --rounds 5 --steps 10
      cp "$OUT/parallel_ratio.log" "$OUT/parallel_ratio.txt" ;;
    bench)
      stage step_ratio "$PY" "$HERE/step_ratio.py" --data_path="$TEXT"
      cp "$OUT/step_ratio.log" "$OUT/step_ratio.txt"
      stage bench_dispatch "$PY" "$HERE/bench_dispatch.py"
      cp "$OUT/bench_dispatch.log" "$OUT/bench_dispatch.txt" ;;
    *) echo "error: unknown part $part (quality, balance, parallel, bench)" >&2; exit 2 ;;
  esac
done
