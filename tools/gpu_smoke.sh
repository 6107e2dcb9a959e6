#!/usr/bin/env bash
# GPU smoke test: every CUDA code path of ssvit in one prepared run (synthetic data, no network),
# in two parts that each fit one 10-minute device call: `correctness` (device choice, 2-process runs
# on one GPU, stop signals, precision, every method's step, segmentation) and `bench` (the benchmark rows).
#
#   bash tools/gpu_smoke.sh [--part correctness|bench|all]   # on a GPU machine (device cuda)
#   bash tools/gpu_smoke.sh --device cpu                      # tiny sizes on CPU (Gloo): the test suite runs this
#
# Needs: torch, torchvision, timm, pyyaml, submitit, tensorboard, scikit-image and ssvit importable (the
# repository root is put on PYTHONPATH; `pip install -e .` is not required). A missing package is named
# in one line and the checks that need it are reported SKIPPED; the rest run.
# Each check runs under `timeout` (CHECK_TIMEOUT seconds, default 240 on GPU, 300 on CPU) and prints
# "[smoke] NAME: ok (Ns)", "FAILED (Ns)" (with the tail of its log) or "TIMEOUT"; every check is a row
# of $WORK/results.tsv (name, status, seconds, part); the logs of failed checks are appended to
# $WORK/failures.log. Logs live in WORK (default: a temp dir). Exit 1 if any check failed.
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
PART=all
ONLY=""   # --only a,b: run just these checks (a rerun of the ones that failed, within the device budget)
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --part) PART="$2"; shift 2 ;;
    --only) ONLY=",$2,"; shift 2 ;;
    *) echo "usage: bash tools/gpu_smoke.sh [--device cuda|cpu] [--part correctness|bench|all] [--only NAME,...]" >&2
       exit 2 ;;
  esac
done
case "$PART" in correctness|bench|all) ;; *) echo "--part must be correctness, bench or all" >&2; exit 2 ;; esac
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
WORK=${WORK:-$(mktemp -d)}
OUT=${OUT:-$WORK}
mkdir -p "$OUT" "$WORK"
RESULTS="$OUT/results.tsv"
printf 'check\tstatus\tseconds\tpart\n' > "$RESULTS"
: > "$OUT/failures.log"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DEVICE" = cuda ]; then CHECK_TIMEOUT=${CHECK_TIMEOUT:-240}; else CHECK_TIMEOUT=${CHECK_TIMEOUT:-300}; fi
FAILED=0
CURRENT_PART=correctness

# import pre-check: one line naming what is missing
MISSING=$("$PY" - <<'PYEOF'
import importlib
missing = []
for mod, pkg in [("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"), ("yaml", "pyyaml"),
                 ("submitit", "submitit"), ("tensorboard", "tensorboard"), ("skimage", "scikit-image"),
                 ("ssvit", "ssvit")]:
    try:
        importlib.import_module(mod)
    except Exception:
        missing.append(pkg)
print(" ".join(missing))
PYEOF
)
[ -n "$MISSING" ] && echo "[smoke] missing packages: $MISSING (pip install them): the checks that need them are SKIPPED"
case " $MISSING " in *" torch "*|*" ssvit "*) echo "[smoke] torch / ssvit missing: nothing can run"; exit 1 ;; esac

row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$CURRENT_PART" >> "$RESULTS"; }

needs() {  # needs PKG...: 0 when all are importable, else report the check SKIPPED
  local name="$1"; shift
  for pkg in "$@"; do
    case " $MISSING " in *" $pkg "*) echo "[smoke] $name: SKIPPED (needs $pkg)"; row "$name" SKIPPED 0; return 1 ;; esac
  done
  return 0
}

kill_tree() {  # kill_tree PID SIGNAL: the process and everything it started
  local p
  for p in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$p" "$2"; done
  kill -"$2" "$1" 2>/dev/null
}

run_limited() {  # run_limited SECONDS FLAG CMD...: CMD (a command or a shell function) stopped after SECONDS
  local limit=$1 flag=$2; shift 2
  rm -f "$flag"
  ( "$@" ) & local pid=$!
  ( sleep "$limit"; touch "$flag"; kill_tree $pid TERM; sleep 10; kill_tree $pid KILL ) & local dog=$!
  wait $pid; local rc=$?
  kill_tree $dog KILL; wait $dog 2>/dev/null
  return $rc
}

check() {  # check NAME CMD...: run under the time limit, time, report, one row of results.tsv
  local name="$1"; shift
  case "$ONLY" in ""|*",$name,"*) ;; *) return 0 ;; esac  # not asked for with --only: no row
  local t0=$SECONDS log="$WORK/$name.log" rc
  run_limited "$CHECK_TIMEOUT" "$WORK/.timeout.$name" "$@" >"$log" 2>&1; rc=$?
  local dt=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    echo "[smoke] $name: ok (${dt}s)"; row "$name" ok "$dt"
  else
    local status=FAILED; [ -f "$WORK/.timeout.$name" ] && status=TIMEOUT
    echo "[smoke] $name: $status (${dt}s)"; tail -n 25 "$log" | sed 's/^/    /'
    { echo "== $name: $status (${dt}s)"; tail -n 60 "$log"; } >> "$OUT/failures.log"
    row "$name" "$status" "$dt"
    FAILED=1
  fi
}

expect() {  # expect NAME FILE PATTERN: the output of an earlier check holds PATTERN
  case "$ONLY" in ""|*",$1,"*) ;; *) return 0 ;; esac
  if grep -q -- "$3" "$WORK/$2.log" 2>/dev/null; then echo "[smoke] $1: ok"; row "$1" ok 0
  else echo "[smoke] $1: FAILED (no '$3' in $2.log)"; row "$1" FAILED 0; FAILED=1; fi
}

if [ "$DEVICE" = cuda ]; then
  # ViT-S/16 at reduced crops for the training paths; the full benchmark row below
  MODEL=(--arch vit_small --patch_size 16 --global_crops_size 224 --local_crops_size 96 --local_crops_number 2
         --out_dim 65536 --batch_size_per_gpu 32)
  DATA=(--dataset synthetic --synthetic_size 512)
  ITERS=20
  NPROC=2      # two ranks: NCCL with two GPUs or more; on one GPU Gloo (NCCL refuses two ranks on one device)
  NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if [ "${NGPU:-0}" -ge 2 ]; then DIST=(--dist_backend nccl); else DIST=(--dist_backend gloo); fi
  BENCH=(--arch vit_small --patch_size 16 --global_crops_size 224 --local_crops_size 96 --local_crops_number 10
         --batch_size_per_gpu 64 --out_dim 65536 --warmup_iters 5 --iters 20)
  BENCH_B=(--arch vit_base --patch_size 16 --global_crops_size 224 --local_crops_size 96 --local_crops_number 10
           --batch_size_per_gpu 32 --out_dim 65536 --warmup_iters 3 --iters 10)
  KNN_SIZE=(--synthetic_size 512)
  ARCH=vit_small; PATCH=16; GSIZE=224; IBOT_DIM=8192
  SWIN=(--method esvit --arch swin_tiny --cfg configs/esvit/swin_tiny_patch4_window7_224.yaml --global_crops_size 224
        --local_crops_size 96 --local_crops_number 6 --batch_size_per_gpu 32 --use_dense_prediction true
        --warmup_iters 3 --iters 10)
else
  MODEL=(--arch vit_pico --patch_size 4 --global_crops_size 32 --local_crops_size 16 --local_crops_number 2
         --out_dim 64 --head_hidden_dim 64 --head_bottleneck_dim 32 --batch_size_per_gpu 4)
  DATA=(--dataset synthetic --synthetic_size 48)
  ITERS=4
  NPROC=2      # Gloo: two ranks on the CPU
  DIST=(--dist_backend gloo)
  BENCH=(--arch vit_pico --patch_size 4 --global_crops_size 32 --local_crops_size 16 --local_crops_number 2
         --batch_size_per_gpu 4 --out_dim 64 --head_hidden_dim 64 --head_bottleneck_dim 32 --warmup_iters 1 --iters 2)
  BENCH_B=()
  KNN_SIZE=(--synthetic_size 48)
  ARCH=vit_pico; PATCH=4; GSIZE=32; IBOT_DIM=64
  SWIN=()
fi
COMMON=("${MODEL[@]}" "${DATA[@]}" --num_workers 2 --tensorboard false --print_freq 1 --device "$DEVICE")
RUN2=("$PY" -m torch.distributed.run --standalone --nproc_per_node $NPROC)  # + main_pretrain.py ... "${DIST[@]}"

"$PY" - "$DEVICE" <<'PYEOF'
import sys, torch
dev = sys.argv[1]
print(f"[smoke] torch {torch.__version__}, cuda available {torch.cuda.is_available()}, device {dev}")
if dev == "cuda" and torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"[smoke] {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 native {torch.cuda.is_bf16_supported(including_emulation=False)}")
PYEOF

# Two lanes of checks that do not depend on each other. On CPU they run side by side (the checks are
# mostly process start-up: about half the wall time); on a GPU one after the other, so that the
# benchmark rows have the device to themselves. (Bodies left unindented: they hold here-documents.)
lane_a() {  # device choice, torchrun, stop signals, non-finite steps, k-NN, submitit
# 1. device choice: --device auto picks the GPU (probe allocation); cpu when asked
check device_auto "$PY" -c "
from ssvit.engine.distributed import resolve_device
d = resolve_device('auto'); print('auto ->', d)
assert (d.type == 'cuda') == ('$DEVICE' == 'cuda'), d"

# 2. torchrun: metrics all-reduce on the backend's device at the end of each epoch (NCCL: CUDA tensors)
check torchrun_epochs "${RUN2[@]}" main_pretrain.py "${COMMON[@]}" "${DIST[@]}" --epochs 2 --saveckp_freq 1 \
  --output_dir "$WORK/ddp"
expect torchrun_collapse_monitors torchrun_epochs "Averaged stats"
check torchrun_log "$PY" -c "
import json; recs = [json.loads(l) for l in open('$WORK/ddp/log.txt')]
assert [r['epoch'] for r in recs] == [0, 1] and 'train_teacher_entropy' in recs[0], recs; print(recs[-1])"

# 4. SIGTERM under torchrun: every rank stops at the same step, one checkpoint, exit 0; then resume
sigterm_run() {
  # 3 epochs: enough steps left for the signal to land before the end on a fast machine
  "${RUN2[@]}" main_pretrain.py "${COMMON[@]}" "${DIST[@]}" --epochs 3 \
    --save_every_minutes 0 --output_dir "$WORK/sigterm" > "$WORK/sigterm_run.log" 2>&1 &
  local launcher=$!
  for _ in $(seq 1 1500); do grep -q "\[1/" "$WORK/sigterm_run.log" 2>/dev/null && break; sleep 0.2; done
  # the workers are the launcher's children: signal the last one only (rank 1): both must stop, once
  local worker; worker=$(pgrep -P $launcher | tail -n 1)
  [ -n "$worker" ] && kill -TERM "$worker"
  wait $launcher; local rc=$?
  cat "$WORK/sigterm_run.log"
  [ $rc -eq 0 ] && [ "$(grep -c "Stopped in epoch" "$WORK/sigterm_run.log")" -eq 1 ]
}
check sigterm_stop sigterm_run
check sigterm_resume "${RUN2[@]}" main_pretrain.py "${COMMON[@]}" "${DIST[@]}" --epochs 3 --save_every_minutes 0 \
  --output_dir "$WORK/sigterm"
expect sigterm_resumed sigterm_resume "Resumed from"

# 5. non-finite loss: skipped, then a clear stop after --max_bad_steps (exit 1), weights on disk finite
check nonfinite "$PY" - "$WORK/nan" "$DEVICE" "${COMMON[@]}" <<'PYEOF'
import sys
import torch
out, dev, *flags = sys.argv[1:]
from ssvit.cli import pretrain as main_pretrain
from ssvit.methods.dino import DINO
orig, n = DINO.training_step, {"i": 0}
def step(self, *a, **k):
    loss, extra = orig(self, *a, **k)
    n["i"] += 1
    return (loss * float("nan") if n["i"] > 3 else loss), extra
DINO.training_step = step
rc = main_pretrain.main(flags + ["--epochs", "1", "--save_every_iters", "1", "--output_dir", out])
from ssvit.utils.checkpoint import load_checkpoint
ck = load_checkpoint(out + "/checkpoint.pth")
finite = all(bool(torch.isfinite(v).all()) for key in ("student", "teacher") for v in ck[key].values()
             if v.is_floating_point())
print("exit", rc, "checkpoint iteration", ck["iter_in_epoch"], "finite", finite)
assert rc == 1 and finite and ck["iter_in_epoch"] == 3
PYEOF

# 6. k-NN: --use_cuda true keeps the bank on the GPU, false on the CPU (extraction on the GPU either way)
for uc in true false; do
  check "knn_use_cuda_$uc" "$PY" eval_knn.py --arch $ARCH --patch_size $PATCH --dataset synthetic \
    "${KNN_SIZE[@]}" --eval_size $GSIZE --pretrained_weights "$WORK/ddp/checkpoint.pth" --nb_knn 5 \
    --use_cuda $uc --num_workers 2 --batch_size_per_gpu 64
done
expect knn_result knn_use_cuda_false "5-NN classifier result"
# 7b. two processes on the device: the stop agreement, object gathers, DDP's gradient average and the
# ordered shutdown (Gloo on CUDA tensors when there is one GPU, NCCL with two or more)
cat > "$WORK/collectives.py" <<'PYEOF'
import sys
import torch
from ssvit.engine.distributed import init_distributed
from ssvit.utils.distributed import all_gather_objects, all_reduce_max
from ssvit.utils.shutdown import finish
info = init_distributed(sys.argv[1], backend=sys.argv[2])
r, dev = info.rank, info.device
assert info.world_size == 2, info
assert all_reduce_max(0, 15 if r == 1 else 0, r) == [0.0, 15.0, 1.0]  # rank 1's SIGTERM reaches rank 0
assert [o["rank"] for o in all_gather_objects({"rank": r, "rng": torch.get_rng_state()})] == [0, 1]
lin = torch.nn.Linear(4, 1, bias=False).to(dev)
ddp = torch.nn.parallel.DistributedDataParallel(lin, device_ids=[dev.index] if dev.type == "cuda" else None)
ddp(torch.full((2, 4), float(r + 1), device=dev)).sum().backward()
assert torch.allclose(lin.weight.grad, torch.full_like(lin.weight, 3.0)), lin.weight.grad  # mean of 2 and 4
print(f"rank {r} on {dev}: collectives ok", flush=True)
finish()
from ssvit.cli.main import leave
leave(0)  # the entry points' end: the DDP module above is a global, freed only at finalisation otherwise
PYEOF
check two_rank_collectives "${RUN2[@]}" "$WORK/collectives.py" "$DEVICE" "${DIST[@]:1}"

# 7. submitit local executor (the requeue path is tested on CPU by the suite)
needs submitit_local submitit && check submitit_local "$PY" -m ssvit submit --cluster local --nodes 1 --ngpus 1 "${COMMON[@]}" \
  --epochs 1 --max_iters $ITERS --output_dir "$WORK/submitit"
}

lane_b() {  # precision, the other methods' steps, segmentation, benchmark rows
# 3. precision: fp16 + GradScaler (default), bf16 (fp32 islands), fp32 (TF32), each a short run
for prec in fp16 bf16; do
  check "amp_$prec" "$PY" main_pretrain.py "${COMMON[@]}" --epochs 1 --max_iters $ITERS --amp_dtype $prec \
    --output_dir "$WORK/amp_$prec"
done
check amp_fp32 "$PY" main_pretrain.py "${COMMON[@]}" --epochs 1 --max_iters $ITERS --use_fp16 false \
  --output_dir "$WORK/amp_fp32"
# crops made on the device from uint8 batches, the fused AdamW and DINOv2's loss terms (fp16 + GradScaler)
check batched_aug_fused_koleo "$PY" main_pretrain.py "${COMMON[@]}" --epochs 1 --max_iters $ITERS \
  --augmentation batched --fused_adamw true --koleo_loss_weight 0.1 --centering sinkhorn_knopp \
  --output_dir "$WORK/batched_aug"
if [ "$DEVICE" = cuda ]; then
  check fp16_scaler_saved "$PY" -c "
from ssvit.utils.checkpoint import load_checkpoint
ck = load_checkpoint('$WORK/amp_fp16/checkpoint.pth'); print('fp16_scaler', ck['fp16_scaler'])
assert ck['fp16_scaler']['scale'] > 0"
fi

# 8. iBOT with a BN head norm under a process group
check ibot_torchrun "${RUN2[@]}" main_pretrain.py \
  --method ibot "${COMMON[@]}" "${DIST[@]}" --out_dim $IBOT_DIM --patch_out_dim $IBOT_DIM --norm_in_head bn --epochs 1 --max_iters $ITERS \
  --output_dir "$WORK/ibot"

# 8b. the other methods' training steps on the device (fp16 autocast + GradScaler on GPU): SiT-v1, SiT-v2, RelViT
SMALL=("${DATA[@]}" --epochs 1 --max_iters $ITERS --num_workers 2 --tensorboard false --device "$DEVICE" --use_fp16 true)
check sit_step "$PY" main_pretrain.py --method sit --arch sit_pico --patch_size 4 --input-size 32 --batch-size 8 \
  --no-repeated-aug "${SMALL[@]}" --output "$WORK/sit"
check sit_v2_step "$PY" main_pretrain.py --method sit_v2 --arch vit_pico --patch_size 4 --global_crops_size 32 \
  --cls_hidden_dim 64 --batch_size 8 "${SMALL[@]}" --output_dir "$WORK/sit_v2"
check relvit_step "$PY" main_pretrain.py --method relvit --task upstream --use_relations --use_abs_positions \
  --model_size pico --batch_size 8 "${SMALL[@]}" --output_dir "$WORK/relvit"

# 8c. segmentation propagation on the device (DAVIS and I-PACE layouts of generated sequences; a random-init ViT)
"$PY" - "$ARCH" 16 "$WORK/seg_vit.pth" <<'EOF_PY' >/dev/null 2>&1
import sys, torch
from ssvit.models import create_backbone
torch.manual_seed(0)
torch.save({"teacher": create_backbone(sys.argv[1], patch_size=int(sys.argv[2]), num_classes=0).state_dict()}, sys.argv[3])
EOF_PY
"$PY" -m ssvit make-sequences --output_dir "$WORK/seq" --n_sequences 1 --n_frames 4 --height 70 --width 100 \
  >/dev/null 2>&1
SEG=(--arch $ARCH --patch_size 16 --pretrained_weights "$WORK/seg_vit.pth" --device "$DEVICE")
needs video_segmentation scikit-image && check video_segmentation "$PY" -m ssvit propagate "${SEG[@]}" --data_path "$WORK/seq/davis" \
  --output_dir "$WORK/seg_davis"
check ipace_segmentation "$PY" -m ssvit propagate --layout ipace "${SEG[@]}" --data_path "$WORK/seq/ipace" \
  --output_dir "$WORK/seg_ipace" --refresh_label_interval 3
check segmentation_metrics "$PY" -m ssvit seg-metrics --data_root "$WORK/seq/ipace" \
  --prediction_path "$WORK/seg_ipace"
expect segmentation_on_device video_segmentation "per frame on $DEVICE"

}

bench_rows() {  # the benchmark part
if [ "$DEVICE" = cuda ]; then KNN_BENCH=(--train 60000 --test 10000 --dim 384 --dtypes fp32 bf16 fp16 --chunk_size 256 2048)
else KNN_BENCH=(--train 600 --test 100 --dim 32 --dtypes fp32 bf16 --chunk_size 64); fi
check knn_speed "$PY" tools/knn_benchmark.py "${KNN_BENCH[@]}" --device "$DEVICE" --json "$WORK/knn_speed.json"

# 9. benchmark rows (ssvit step vs the original code paths, same process)
check bench_dino_fp16 "$PY" tools/benchmark.py "${BENCH[@]}" --amp_dtype fp16 --compare_original --device "$DEVICE" \
  --json "$WORK/bench_dino_fp16.json"
check bench_dino_bf16 "$PY" tools/benchmark.py "${BENCH[@]}" --amp_dtype bf16 --device "$DEVICE" \
  --json "$WORK/bench_dino_bf16.json"
check bench_ibot "$PY" tools/benchmark.py --method ibot "${BENCH[@]}" --out_dim $IBOT_DIM --patch_out_dim $IBOT_DIM \
  --device "$DEVICE"
if [ ${#BENCH_B[@]} -gt 0 ]; then  # GPU only (the CPU mode's suite time): --compile rows, ViT-B, Swin-T
  check bench_dino_bf16_compile "$PY" tools/benchmark.py "${BENCH[@]}" --amp_dtype bf16 --compile true \
    --device "$DEVICE" --json "$WORK/bench_dino_bf16_compile.json"
  check bench_dino_fp16_compile "$PY" tools/benchmark.py "${BENCH[@]}" --amp_dtype fp16 --compile true \
    --device "$DEVICE" --json "$WORK/bench_dino_fp16_compile.json"
  check bench_vit_base "$PY" tools/benchmark.py "${BENCH_B[@]}" --device "$DEVICE"
  check bench_swin_esvit "$PY" tools/benchmark.py "${SWIN[@]}" --device "$DEVICE"
fi
}

if [ "$PART" != bench ]; then
  CURRENT_PART=correctness
  if [ "$DEVICE" = cpu ]; then
    lane_a > "$WORK/lane_a.out" 2>&1 &
    lane_b > "$WORK/lane_b.out" 2>&1
    wait
    cat "$WORK/lane_a.out" "$WORK/lane_b.out"
  else
    lane_a 2>&1 | tee "$WORK/lane_a.out"
    lane_b 2>&1 | tee "$WORK/lane_b.out"
  fi
fi
if [ "$PART" != correctness ]; then
  CURRENT_PART=bench
  bench_rows 2>&1 | tee "$WORK/bench.out"
fi
# the lanes run in subshells: their failures are read back from results.tsv
awk -F'\t' 'NR > 1 && ($2 == "FAILED" || $2 == "TIMEOUT") { bad = 1 } END { exit !bad }' "$RESULTS" && FAILED=1

for f in "$WORK"/bench_*.log "$WORK"/knn_speed.log; do [ -f "$f" ] || continue; grep -E "img/s|speed-up|^[a-z_]+ .*crops|compile" "$f" | sed "s|^|[bench $(basename "$f" .log)] |"; done

echo "[smoke] results in $RESULTS, logs in $WORK"
if [ $FAILED -ne 0 ]; then echo "[smoke] SOME CHECKS FAILED"; exit 1; fi
echo "[smoke] all checks passed"
