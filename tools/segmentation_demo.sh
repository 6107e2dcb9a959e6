#!/usr/bin/env bash
# The segmentation-propagation tools on generated sequences (no dataset needed): DAVIS and I-PACE layouts,
# a checkpoint's ViT against the same ViT at random init (seed 0). Prints J (DAVIS), IoU (I-PACE) and
# seconds per frame; pictures in runs/segmentation_demo/<row>/ipace/<run>/vis/.
# Usage: tools/segmentation_demo.sh [CHECKPOINT [ARCH [PATCH [SHORT_SIDE]]]] (default: the main job's DINO
# teacher; ARCH and PATCH default to the arch / patch_size in the config.yaml beside the checkpoint, else
# vit_shallow/7; SHORT_SIDE, the DAVIS frames' resized short side, defaults to the multiple of PATCH nearest
# 192 px: 189 px at patch 7, 27 x 37 patches, instead of the original 480 px's 60 x 80 at patch 8)
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:-runs/fashion_mnist_dino/checkpoint.pth}
out=runs/segmentation_demo
py=.venv/bin/python
[[ -f $ckpt ]] || { echo "checkpoint not found: $ckpt (run bash scripts/run_default.sh first)" >&2; exit 2; }
cfg=$(dirname "$ckpt")/config.yaml
cfg_value() { if [[ -f $cfg ]]; then sed -n "s/^$1: *\([^ #]*\).*/\1/p" "$cfg" | head -1; fi; }
arch=${2:-$(cfg_value arch)}; arch=${arch:-vit_shallow}
patch=${3:-$(cfg_value patch_size)}; patch=${patch:-7}
[[ $patch =~ ^[1-9][0-9]*$ ]] || { echo "patch size must be a positive integer, got '$patch'" >&2; exit 2; }
short=${4:-$((patch * ((192 + patch / 2) / patch)))}
$py -m ssvit make-sequences --output_dir "$out/data" --n_sequences 3 --n_frames 20
$py - "$arch" "$patch" "$out/random_init.pth" <<'EOF'
import sys, torch
from ssvit.models import create_backbone
torch.manual_seed(0)
m = create_backbone(sys.argv[1], patch_size=int(sys.argv[2]), num_classes=0)
torch.save({"teacher": m.state_dict()}, sys.argv[3])
EOF
for row in trained random_init; do
    w=$ckpt; [[ $row == random_init ]] && w=$out/random_init.pth
    common=(--arch "$arch" --patch_size "$patch" --pretrained_weights "$w" --device cpu)
    echo "== $row: DAVIS layout"
    $py -m ssvit propagate "${common[@]}" --data_path "$out/data/davis" --output_dir "$out/$row/davis" \
        --short_side "$short" \
        | grep "per frame"
    $py -m ssvit seg-metrics --davis_path "$out/data/davis" --prediction_path "$out/$row/davis" | tail -1
    echo "== $row: I-PACE layout (re-seeded every 10 frames)"
    $py -m ssvit propagate --layout ipace "${common[@]}" --data_path "$out/data/ipace" --output_dir "$out/$row/ipace" \
        --refresh_label_interval 10 | grep "per frame"
    $py -m ssvit seg-metrics --data_root "$out/data/ipace" --prediction_path "$out/$row/ipace" \
        | grep -E "^(mean|pooled)"
done
