#!/usr/bin/env bash
# RelViT upstream on megapatches (--side_megapatches N, default 5), as the seed's script.
RELVIT_TASK_NAME=upstream_megapatch
RELVIT_TASK_FLAGS=(--task upstream --use_relations --use_abs_positions --mega_patches)
source "$(dirname "$0")/relvit_common.sh"
