#!/usr/bin/env bash
# RelViT downstream: supervised finetuning (positional embeddings on) from --model_checkpoint, as the seed's script
# (whose --drop_path_rate is passed through a misspelt variable and is always empty: here it is honoured).
RELVIT_TASK_NAME=downstream
RELVIT_TASK_FLAGS=(--task downstream --use_positional_embeddings --use_supervision --use_clf_token)
source "$(dirname "$0")/relvit_common.sh"
