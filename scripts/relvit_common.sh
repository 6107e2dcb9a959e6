#!/usr/bin/env bash
# Shared by RelViT's seed scripts (scripts/upstream.sh, downstream.sh, downstream-only.sh,
# upstream_MEGApatch.sh): the seed's flags and defaults, then main_pretrain.py --method relvit.
# --num_gpus N > 1 runs under torchrun. Unknown flags are refused, as the originals do.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="train"; BACKBONE="vit"; MODEL_CKPT=""; PATCH_SIZE=-1; BATCH_SIZE=256; MODEL_SIZE="small"; EXP_ID=""
OPTIMIZER="adamw"; LR="5e-4"; EPOCHS=100; NUM_GPUS=1; PROJ_DROPOUT=0; DROP_PATH_RATE=0.0; DROPOUT=0.1
WEIGHT_DECAY=0.0; NUM_WORKERS=8; DATA_BASE_PATH="./datasets/data"
PATCH_TRANS="${RELVIT_PATCH_TRANS_DEFAULT:-colJitter:0.8-grayScale:0.2}"
SEED=35771; SIDE_MEGAPATCHES=5; LABELS_PATH=""; DATASET=""; OUTPUT_DIR=""
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mode) MODE="$2" ;; --backbone) BACKBONE="$2" ;; --model_checkpoint) MODEL_CKPT="$2" ;;
        --patch_size) PATCH_SIZE="$2" ;; --batch_size) BATCH_SIZE="$2" ;; --model_size) MODEL_SIZE="$2" ;;
        --exp_id) EXP_ID="$2" ;; --optimizer) OPTIMIZER="$2" ;; --lr) LR="$2" ;; --epochs) EPOCHS="$2" ;;
        --num_gpus) NUM_GPUS="$2" ;; --proj_dropout) PROJ_DROPOUT="$2" ;; --drop_path_rate) DROP_PATH_RATE="$2" ;;
        --dropout) DROPOUT="$2" ;; --weight_decay) WEIGHT_DECAY="$2" ;; --num_workers) NUM_WORKERS="$2" ;;
        --data_base_path) DATA_BASE_PATH="$2" ;; --patch_trans) PATCH_TRANS="$2" ;; --dataset) DATASET="$2" ;;
        --seed) SEED="$2" ;; --side_megapatches) SIDE_MEGAPATCHES="$2" ;; --labels_path) LABELS_PATH="$2" ;;
        --output_dir) OUTPUT_DIR="$2" ;;
        --download|--tensorboard|--max_iters|--device|--synthetic_size) EXTRA+=("$1" "$2") ;;  # ssvit's
        *) echo "$1 argument not allowed"; exit 1 ;;
    esac
    shift 2
done
if [[ -z "$DATASET" ]]; then echo "--dataset is required"; exit 2; fi
OUTPUT_DIR="${OUTPUT_DIR:-tmp/${DATASET}/${RELVIT_TASK_NAME}${EXP_ID:+-$EXP_ID}}"
LAUNCH=("$ROOT/.venv/bin/python")
[[ -x "${LAUNCH[0]}" ]] || LAUNCH=(python)
if [[ "$NUM_GPUS" -gt 1 ]]; then LAUNCH+=(-m torch.distributed.run --nproc_per_node "$NUM_GPUS"); fi
exec "${LAUNCH[@]}" "$ROOT/main_pretrain.py" --method relvit --seed "$SEED" --mode "$MODE" --grad_clip_val 1.0 \
    --exp_id "$EXP_ID" --backbone "$BACKBONE" --model_size "$MODEL_SIZE" --num_gpus "$NUM_GPUS" --epochs "$EPOCHS" \
    --dataset "$DATASET" --data_base_path "$DATA_BASE_PATH" --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS" \
    --weight_decay "$WEIGHT_DECAY" --optimizer "$OPTIMIZER" --lr "$LR" --drop_path_rate "$DROP_PATH_RATE" \
    --proj_dropout "$PROJ_DROPOUT" --model_checkpoint "$MODEL_CKPT" --patch_size "$PATCH_SIZE" --dropout "$DROPOUT" \
    --attn_mask "" --patch_trans "$PATCH_TRANS" --labels_path "$LABELS_PATH" --side_megapatches "$SIDE_MEGAPATCHES" \
    --output_dir "$OUTPUT_DIR" "${RELVIT_TASK_FLAGS[@]}" "${EXTRA[@]}"
