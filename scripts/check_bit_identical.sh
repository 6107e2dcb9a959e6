#!/usr/bin/env bash
# Fixed-seed CPU runs of dino / ibot / ibot_sere / esvit (ViT and Swin) with this checkout and with
# another revision; prints whether the final weights and loss states are bit-identical.
# The recorded check behind engine refactors ("every existing method keeps bit-identical behaviour").
#
#   bash scripts/check_bit_identical.sh REV      # e.g. HEAD~3
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bash scripts/check_bit_identical.sh REV}
HERE=$(pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
WORK=$(mktemp -d)
git worktree add -q --detach "$WORK/base" "$REV"
trap 'git worktree remove --force "$WORK/base"; rm -rf "$WORK"' EXIT
T=(--dataset synthetic --synthetic_size 48 --arch vit_pico --patch_size 4 --global_crops_size 32 --local_crops_size 16
   --local_crops_number 2 --out_dim 64 --head_hidden_dim 64 --head_bottleneck_dim 32 --batch_size_per_gpu 8
   --num_workers 0 --tensorboard false --lr 0.005 --epochs 2 --saveckp_freq 1)
runs() {  # runs TREE OUT
  local tree=$1 out=$2
  ( cd "$tree" && export OMP_NUM_THREADS=1 PYTHONPATH="$tree"
    "$PY" main_pretrain.py "${T[@]}" --method dino --output_dir "$out/dino"
    "$PY" main_pretrain.py "${T[@]}" --method ibot --patch_out_dim 64 --output_dir "$out/ibot"
    "$PY" main_pretrain.py "${T[@]}" --method ibot_sere --patch_out_dim 64 --overlap_size 3 3 \
      --sere_channel_sizes 8 4 --output_dir "$out/ibot_sere"
    "$PY" main_pretrain.py "${T[@]}" --method esvit --use_dense_prediction true --output_dir "$out/esvit"
    "$PY" main_pretrain.py "${T[@]}" --method esvit --arch swin_pico --global_crops_size 64 --local_crops_size 32 \
      --use_dense_prediction true --output_dir "$out/esvit_swin" ) > "$out.log" 2>&1
}
runs "$WORK/base" "$WORK/old"
runs "$HERE" "$WORK/new"
"$PY" - "$WORK" "$REV" <<'PYEOF'
import sys
import torch
from ssvit.engine.checkpoint import load_checkpoint
work, rev = sys.argv[1:]
ok = True
for m in ["dino", "ibot", "ibot_sere", "esvit", "esvit_swin"]:
    a, b = (load_checkpoint(f"{work}/{w}/{m}/checkpoint.pth") for w in ("old", "new"))
    lk = [k for k in a if k.endswith("_loss")][0]
    same = all(torch.equal(a[k][n], b[k][n]) for k in ("student", "teacher") for n in a[k]) and \
        all(torch.equal(a[lk][n], b[lk][n]) for n in a[lk])
    ok &= same
    print(f"{m:>10}: {'bit-identical' if same else 'DIFFERS'} to {rev}")
sys.exit(0 if ok else 1)
PYEOF
