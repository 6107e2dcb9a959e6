#!/usr/bin/env bash
# RelViT downstream-only: supervised + relations + absolute positions from scratch, as the seed's script
# (its default --patch_trans is "None").
RELVIT_TASK_NAME=downstream-only
RELVIT_TASK_FLAGS=(--task downstream --use_positional_embeddings --use_supervision --use_clf_token --use_relations
                   --use_abs_positions)
RELVIT_PATCH_TRANS_DEFAULT=None
source "$(dirname "$0")/relvit_common.sh"
