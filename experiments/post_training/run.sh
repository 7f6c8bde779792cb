#!/usr/bin/env bash
# The post-training worked example end to end (experiments/post_training/README.md):
# data -> base LM -> SFT -> DPO (three betas) -> a short SFT -> GRPO, each evaluated on
# held-out problems before and after.
#
#   bash experiments/post_training/run.sh [OUT]        (default OUT: runs/post_training)
#
# Writes OUT/data, one run directory per stage, OUT/<stage>.log, OUT/results.jsonl (one line
# per evaluation), OUT/times.txt (wall seconds per stage), and the GRPO reward curve
# experiments/post_training/grpo_reward.png. OUT must not hold an earlier run (treadle-train
# would resume it): remove it first. PYTHON and TREADLE_TRAIN override .venv/bin/python and
# .venv/bin/treadle-train.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/post_training
OUT=${1:-runs/post_training}
PY=${PYTHON:-.venv/bin/python}
TRAIN=${TREADLE_TRAIN:-.venv/bin/treadle-train}
DATA=$OUT/data
if [ -e "$OUT/base" ]; then
  echo "error: $OUT already holds runs; remove it or name another OUT" >&2
  exit 2
fi
mkdir -p "$OUT"

stage() {  # NAME COMMAND...: runs it with its output in OUT/NAME.log, wall time in times.txt
  local name=$1 start end
  shift
  start=$EPOCHREALTIME
  "$@" > "$OUT/$name.log" 2>&1 || { echo "error: stage $name failed, see $OUT/$name.log" >&2; exit 1; }
  end=$EPOCHREALTIME
  awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "%s %.1f\n", n, b - a }' \
    | tee -a "$OUT/times.txt"
}

evaluate() {  # LABEL RUN FILE [--reference REF]
  "$PY" "$HERE/evaluate.py" "$2" "$3" --label "$1" "${@:4}" 2>> "$OUT/evaluate.log" \
    | tee -a "$OUT/results.jsonl"
}

stage data "$PY" "$HERE/make_data.py" "$DATA"

# base LM: a 2-layer, 64-wide character GPT on the noisy corpus, one problem per document
# (packed: each starts at position 0 and ends with the end-of-text id, as prompts will)
stage base "$TRAIN" --config configs/base.py --workdir "$OUT/base" \
  --config.data.path="$DATA/corpus.jsonl" --config.data.packing=True --config.data.seq_len=32 \
  --config.model.num_layers=2 --config.model.embed_dim=64 --config.train.batch_size=32 \
  --config.train.num_steps=3000 --config.optimizer.learning_rate=3e-3 \
  --config.train.eval_every=500 --config.train.log_every=100 --config.train.checkpoint_every=3000
evaluate base "$OUT/base" "$DATA/heldout.jsonl"
evaluate base "$OUT/base" "$DATA/heldout_dpo.jsonl"

sft() {  # WORKDIR STEPS
  "$TRAIN" --config configs/sft.py --workdir "$1" --config.train.init_from="$OUT/base" \
    --config.data.path="$DATA/sft.jsonl" --config.data.seq_len=16 \
    --config.train.batch_size=32 --config.optimizer.learning_rate=1e-3 \
    --config.train.num_steps="$2" --config.train.eval_every=10
}
stage sft sft "$OUT/sft" 400
evaluate sft "$OUT/sft" "$DATA/heldout.jsonl"

# DPO from the base (whose mistakes its pairs reject), at three strengths of the tie to it
for beta in 0.1 0.5 2.0; do
  stage "dpo_beta$beta" "$TRAIN" --config configs/dpo.py --workdir "$OUT/dpo_beta$beta" \
    --config.train.init_from="$OUT/base" --config.data.path="$DATA/dpo.jsonl" \
    --config.data.seq_len=16 --config.train.batch_size=32 --config.train.num_steps=200 \
    --config.optimizer.learning_rate=1e-4 --config.optimizer.min_learning_rate=1e-5 \
    --config.dpo.beta="$beta"
  evaluate "dpo_beta$beta" "$OUT/dpo_beta$beta" "$DATA/heldout.jsonl"
  evaluate "dpo_beta$beta" "$OUT/dpo_beta$beta" "$DATA/heldout_dpo.jsonl" --reference "$OUT/base"
done

# GRPO from the same SFT stopped after 10 steps: partly right
stage sft_short sft "$OUT/sft_short" 10
evaluate sft_short "$OUT/sft_short" "$DATA/heldout.jsonl"
stage grpo "$TRAIN" --config configs/grpo.py --workdir "$OUT/grpo" \
  --config.train.init_from="$OUT/sft_short" --config.rl.prompts="$DATA/prompts.jsonl" \
  --config.rl.reward="$HERE/reward.py:exact_match" --config.rl.max_new_tokens=4 \
  --config.rl.group_size=16 --config.train.batch_size=32 --config.optimizer.learning_rate=1e-3 \
  --config.train.num_steps=150 --config.train.eval_every=10 \
  --config.optimizer.min_learning_rate=1e-5 --config.train.checkpoint_every=25
evaluate grpo "$OUT/grpo" "$DATA/heldout.jsonl"

"$PY" "$HERE/report.py" "$OUT" --plot "$HERE/grpo_reward.png"
