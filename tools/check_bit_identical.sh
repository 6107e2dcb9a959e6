#!/usr/bin/env bash
# Fixed-seed 2-epoch CPU runs of every method with this checkout and with another revision; prints, per
# method, whether the final checkpoints are bit-identical: every tensor (student, teacher, loss state,
# optimizer state, EMA, RNG states) -- all but the flags and the epoch's timing figures.
# The recorded check behind engine refactors ("numerics unchanged").
#
#   bash tools/check_bit_identical.sh REV      # e.g. HEAD~3
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bash tools/check_bit_identical.sh REV}
HERE=$(pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
WORK=$(mktemp -d)
git worktree add -q --detach "$WORK/base" "$REV"
trap 'git worktree remove --force "$WORK/base"; rm -rf "$WORK"' EXIT
C=(--dataset synthetic --synthetic_size 48 --num_workers 0 --tensorboard false --epochs 2 --save_every_minutes 0)
T=("${C[@]}" --arch vit_pico --patch_size 4 --global_crops_size 32 --local_crops_size 16 --local_crops_number 2
   --out_dim 64 --head_hidden_dim 64 --head_bottleneck_dim 32 --batch_size_per_gpu 8 --lr 0.005 --saveckp_freq 1)
MS=("${C[@]}" --method esvit --global_crops_size 64 --local_crops_size 32 --local_crops_number 2 --out_dim 32
    --head_hidden_dim 32 --head_bottleneck_dim 16 --batch_size_per_gpu 4 --use_dense_prediction true)
RV=("${C[@]}" --method relvit --task upstream --use_relations --use_abs_positions --model_size pico --patch_size 8
    --patch_trans none --batch_size 8)
METHODS=(dino ibot ibot_sere dino_sere esvit esvit_swin esvit_cvt esvit_vil sit sit_clip sit_v2 relvit
         relvit_megapatch finetune)
run_one() {  # run_one NAME OUT
  local m=$1 o=$2/$1
  case $m in
    dino) python main_pretrain.py "${T[@]}" --method dino --output_dir "$o" ;;
    ibot) python main_pretrain.py "${T[@]}" --method ibot --patch_out_dim 64 --output_dir "$o" ;;
    ibot_sere) python main_pretrain.py "${T[@]}" --method ibot_sere --patch_out_dim 64 --overlap_size 3 3 \
                 --sere_channel_sizes 8 4 --output_dir "$o" ;;
    dino_sere) python main_pretrain.py "${T[@]}" --method dino_sere --overlap_size 3 3 --sere_channel_sizes 8 4 \
                 --output_dir "$o" ;;
    esvit) python main_pretrain.py "${T[@]}" --method esvit --use_dense_prediction true --output_dir "$o" ;;
    esvit_swin|esvit_cvt|esvit_vil) python main_pretrain.py "${MS[@]}" --arch "${m#esvit_}_pico" --output_dir "$o" ;;
    sit) python main_pretrain.py "${C[@]}" --method sit --arch sit_pico --patch_size 4 --input-size 16 \
           --no-repeated-aug --batch-size 8 --output_dir "$o" ;;
    sit_clip) python main_pretrain.py "${C[@]}" --method sit --arch sit_pico --patch_size 4 --input-size 16 \
           --no-repeated-aug --batch-size 8 --clip-grad 0.5 --output_dir "$o" ;;
    sit_v2) python main_pretrain.py "${C[@]}" --method sit_v2 --arch vit_pico --patch_size 4 --global_crops_size 16 \
              --cls_hidden_dim 64 --batch_size_per_gpu 8 --output_dir "$o" ;;
    relvit) python main_pretrain.py "${RV[@]}" --output_dir "$o" ;;
    relvit_megapatch) python main_pretrain.py "${RV[@]}" --mega_patches --side_megapatches 3 --output_dir "$o" ;;
    finetune) python main_finetune.py "${C[@]}" --model vit_pico --patch_size 4 --input_size 16 --nb_classes 10 \
                --batch_size 8 --clip_grad 1.0 --smoothing 0.1 --output_dir "$o" ;;
  esac
}
runs() {  # runs TREE OUT
  local tree=$1 out=$2
  mkdir -p "$out"
  ( cd "$tree" && export OMP_NUM_THREADS=1 PYTHONPATH="$tree"
    python() { "$PY" "$@"; }
    for m in "${METHODS[@]}"; do run_one "$m" "$out" > "$out/$m.log" 2>&1 || echo "$m: FAILED in $tree (see $out/$m.log)"; done )
}
runs "$WORK/base" "$WORK/old"
runs "$HERE" "$WORK/new"
"$PY" - "$WORK" "$REV" "${METHODS[@]}" <<'PYEOF'
import sys
import torch
work, rev, *methods = sys.argv[1:]
SKIP = {"args", "epoch_log"}

def diff(a, b, path=""):
    """(tensors that differ, other entries that differ): only the first count against bit-identity."""
    if isinstance(a, dict) and isinstance(b, dict):
        t, o = [], [f"{path}: keys {sorted(set(a) ^ set(b))}"] if set(a) ^ set(b) else []
        for k in set(a) & set(b):
            if k in SKIP and not path:
                continue
            dt, do = diff(a[k], b[k], f"{path}.{k}")
            t += dt; o += do
        return t, o
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        t, o = [], []
        for i, (x, y) in enumerate(zip(a, b)):
            dt, do = diff(x, y, f"{path}[{i}]")
            t += dt; o += do
        return t, o
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            a.shape == b.shape and torch.equal(a, b)
        return ([] if same else [path]), []
    return [], ([] if a == b else [f"{path}: {a!r} vs {b!r}"])

ok = True
for m in methods:
    try:
        a, b = (torch.load(f"{work}/{w}/{m}/checkpoint.pth", weights_only=False) for w in ("old", "new"))
    except FileNotFoundError as e:
        print(f"{m:>17}: MISSING ({e.filename})"); ok = False; continue
    tensors, other = diff(a, b)
    ok &= not tensors
    def ntensors(o):
        if isinstance(o, torch.Tensor):
            return 1
        if isinstance(o, dict):
            return sum(ntensors(v) for k, v in o.items() if k not in SKIP)
        return sum(ntensors(v) for v in o) if isinstance(o, (list, tuple)) else 0
    count = ntensors(a)  # how many tensors were compared
    print(f"{m:>17}: {'bit-identical' if not tensors else 'DIFFERS: ' + ', '.join(tensors[:4])} to {rev}"
          f" ({count} tensors)" + (f"; other entries differ: {', '.join(other[:3])}" if other else ""))
sys.exit(0 if ok else 1)
PYEOF
