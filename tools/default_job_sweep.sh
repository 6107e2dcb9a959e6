#!/usr/bin/env bash
# Recipe sweep for the embedded default job (issue 14, part 3): short probes of the default config with
# one or a few flags changed, each followed by the k-NN probe on the full Fashion-MNIST splits (60k / 10k).
#
#   bash tools/default_job_sweep.sh [ITERS] [NAME=FLAGS ...]
#
# ITERS 0 sets no cap: each probe runs its whole schedule (e.g. "probe=--epochs 1 ..." completes the
# warm-up and the cosine lr / teacher-momentum schedules in one epoch, where ITERS > 0 stops the
# config's 5-epoch schedule early). Without NAME=FLAGS it runs the list below.
# One row per probe is appended to $OUT/results.md:
# name | iterations | pretraining seconds | 20-NN top-1 of the teacher for each of $FEATURES, '/'-separated | flags.
# FEATURES defaults to "cls cls_avgpool" (add last4_cls for backbones of four blocks or more).
# Runs are sequential (2 cores: parallel runs would only share them). OUT defaults to runs/sweep;
# PROBE_TRAIN / PROBE_TEST (default 60000 / 10000) shrink the k-NN splits for a quick check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ITERS=${1:-300}; shift || true
OUT=${OUT:-runs/sweep}
mkdir -p "$OUT"
if [ $# -eq 0 ]; then
  set -- "default=" "bn_head=--use_bn_in_head true" "teacher_temp_0.02=--teacher_temp 0.02 --warmup_teacher_temp 0.02" \
         "out_dim_256=--out_dim 256" "milder_crops=--global_crops_scale 0.5 1 --local_crops_scale 0.2 0.5" \
         "momentum_0.9=--momentum_teacher 0.9" "lr_0.003=--lr 0.003"
fi
for spec in "$@"; do
  name=${spec%%=*}; flags=${spec#*=}
  dir="$OUT/$name"; rm -rf "$dir"
  t0=$SECONDS
  # shellcheck disable=SC2086
  "$PY" main_pretrain.py --config configs/fashion_mnist_dino.yaml --max_iters "$ITERS" --tensorboard false \
    --output_dir "$dir" $flags > "$dir.log" 2>&1
  secs=$((SECONDS - t0))
  # knn_probe reads the arch and patch size the run recorded in its checkpoint
  probe=$("$PY" tools/knn_probe.py "$dir/checkpoint.pth" \
          --train_images "${PROBE_TRAIN:-60000}" --test_images "${PROBE_TEST:-10000}" --features ${FEATURES:-cls cls_avgpool} --skip_baselines 2>/dev/null \
          | sed -n 's/^trained\/\([a-z0-9_]*\): 20-NN top-1 \(.*\)$/\2/p' | paste -sd/ -)
  row="| $name | $ITERS | $secs | $probe | \`$flags\` |"
  echo "$row" | tee -a "$OUT/results.md"
done
