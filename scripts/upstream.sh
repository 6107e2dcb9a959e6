#!/usr/bin/env bash
# RelViT upstream (self-supervised: relations + absolute positions, no positional embeddings), as the seed's script.
#   bash scripts/upstream.sh --exp_id e1 --backbone vit --model_size small --num_gpus 1 --epochs 100 --dataset cifar10 \
#       --weight_decay 0.1 --drop_path_rate 0.1 --dropout 0.0
RELVIT_TASK_NAME=upstream
RELVIT_TASK_FLAGS=(--task upstream --use_relations --use_abs_positions)
source "$(dirname "$0")/relvit_common.sh"
