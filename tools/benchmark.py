#!/usr/bin/env python
"""Pretraining throughput benchmark: img/s, peak memory and model-FLOPs utilisation (MFU).

Times the engine's own step function (``ssvit.engine.step.TrainStep``: forward under autocast, the
loss read on the host, backward through the GradScaler with fp16, per-parameter clipping,
last-layer cancelling, optimizer step, EMA -- with the engine's per-step host syncs) on one batch
made by the method's own transform (crops, iBOT masks, SERE overlap grids) from random images, so
the figure isolates the model/engine from data loading. ``--method dino | ibot | ibot_sere |
dino_sere | esvit``. Every pretraining flag applies (``--arch``, ``--patch_size``, crops,
``--batch_size_per_gpu``, ``--use_fp16``/``--amp_dtype``, ``--clip_grad``...).

``--compare_original`` also times, in the same process, the original DINO code paths that ssvit
replaced (explicit softmax attention instead of ``F.scaled_dot_product_attention``; per-parameter
clipping with one host sync per tensor) and prints the speed ratio.

Model FLOPs are counted once per configuration with ``torch.utils.flop_counter`` on the explicit
attention path (the counter sees no FLOPs in CPU ``scaled_dot_product_attention``), so both rows
share the same FLOP figure. MFU divides by the chip's dense peak for the precision used (table
below, or ``--peak_tflops``).

Example: python tools/benchmark.py --arch vit_small --patch_size 16 --batch_size_per_gpu 64 \
             --local_crops_number 10 --device cuda --compare_original

Whole-process epochs (issue 14's CPU ratio): ``--baseline`` runs one epoch of the original
``main_dino.py`` training loop re-created eagerly (``original_epoch``: DINO's PIL augmentation with
ToTensor + Normalize on the main thread, explicit-softmax attention, an unfused for-loop AdamW,
per-parameter clipping with a host sync per tensor, the per-parameter EMA loop, the loss read twice per
step, ``checkpoint.pth`` at the end); ``--compare_epoch --rounds N`` times, in alternating rounds, that
process against ``main_pretrain.py`` with the same flags (each a fresh process, wall time from start to
exit) and prints each round and the median ratio:

    python tools/benchmark.py --compare_epoch --rounds 4 --method dino --arch vit_tiny --patch_size 16 \
        --data_path DIR --epochs 1 --batch_size_per_gpu 32 --local_crops_number 2 --num_workers 0 --out_dim 4096

(without ``--data_path`` a 128-image ImageFolder of scikit-image photos is generated in a temp folder).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from ssvit.cli.pretrain import get_args_parser  # noqa: E402
from ssvit.config import parse_with_config  # noqa: E402
from ssvit.engine.distributed import resolve_device  # noqa: E402
from ssvit.engine.optim import build_optimizer, fused_adamw_wanted  # noqa: E402
from ssvit.utils.params import clip_gradients  # noqa: E402
from ssvit.engine.trainer import fix_random_seeds, validate_args  # noqa: E402
from ssvit.engine.step import TrainStep  # noqa: E402
from ssvit.methods import get_method  # noqa: E402
from ssvit.utils.precision import select_amp_dtype  # noqa: E402

# dense (no sparsity) peak TFLOP/s: (bf16/fp16 tensor core, tf32 tensor core, fp32 non-tensor)
PEAK_TFLOPS = [
    ("H200", (989.4, 494.7, 67.0)),
    ("H100 NVL", (835.0, 417.5, 60.0)),
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H100", (989.4, 494.7, 67.0)),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.05, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
    ("V100", (125.0, 15.7, 15.7)),  # fp16 only; no bf16 / tf32 tensor cores
    ("T4", (65.0, 8.1, 8.1)),
]


def peak_tflops(device_name: str, amp_dtype: Optional[torch.dtype], tf32: bool) -> Optional[float]:
    """The dense peak for ``device_name`` at the precision used; None when the chip is not listed."""
    for key, (half, tf32_peak, fp32) in PEAK_TFLOPS:
        if key in device_name:
            if amp_dtype is not None:
                return half
            return tf32_peak if tf32 else fp32
    return None


def measured_matmul_tflops(device: torch.device, amp_dtype: Optional[torch.dtype], n: int = 4096,
                           repeats: int = 5) -> float:
    """Best-of-``repeats`` TFLOP/s of an n^3 matmul on ``device`` in the step's precision: the GEMM speed
    a training step cannot beat on this machine (model FLOPs / this = the step's time floor)."""
    dtype = amp_dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def precision_label(device: torch.device, amp_dtype: Optional[torch.dtype], tf32: bool) -> str:
    if amp_dtype is torch.float16:
        return "fp16 autocast + GradScaler"
    if amp_dtype is torch.bfloat16:
        return "bf16 autocast"
    return "fp32 (tf32 matmuls)" if device.type == "cuda" and tf32 else "fp32"


def clip_gradients_original(model, clip):
    """DINO's utils.clip_gradients verbatim: a norm kernel, an .item() host sync and a branch per tensor."""
    norms = []
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def make_batch(method, args, device):
    """One batch exactly as the training loop gives it to the step (the method's own transform: crops, and
    masks / overlap grids where the method uses them; with ``--augmentation batched`` the batch
    transform after the loader) on random images, moved to ``device``."""
    import numpy as np
    from PIL import Image
    from torch.utils.data import default_collate

    from ssvit.engine.loop import to_device
    transform = method.build_transform(args)
    rng = np.random.RandomState(args.seed)
    side = max(args.global_crops_size, 32)
    imgs = [Image.fromarray((rng.rand(side, side, 3) * 255).astype(np.uint8)) for _ in range(args.batch_size_per_gpu)]
    batch = to_device(default_collate([transform(im) for im in imgs]), device)
    batch_transform = method.build_batch_transform(args)  # --augmentation batched: crops made per batch
    return batch if batch_transform is None else batch_transform(batch, torch.Generator().manual_seed(args.seed))


def build(args, device, original: bool):
    fix_random_seeds(args.seed)
    method = get_method(args.method)(args).to(device)
    for m in method.modules():  # timm Attention: fused SDPA unless told otherwise
        if hasattr(m, "fused_attn"):
            m.fused_attn = not original
    if getattr(args, "compile", False) and not original:  # the original code paths stay eager
        from ssvit.utils.compile import compile_task
        compile_task(method, args.compile_cache_dir)
    opt = build_optimizer(args.optimizer, method.param_groups(method.student),
                          fused=fused_adamw_wanted(args.fused_adamw, device) and not original)
    for g in opt.param_groups:
        g["lr"] = 1e-4
    amp_dtype = select_amp_dtype(device, args.use_fp16, args.amp_dtype)
    if hasattr(method, "freeze_last_layer"):
        method.freeze_last_layer = 0  # time the steady state: the prototype layer trains too
    step = TrainStep(method, method.student, opt, device=device, amp_dtype=amp_dtype, clip_grad=args.clip_grad,
                     clip_fn=clip_gradients_original if original else clip_gradients)
    return method, step


def count_flops(args, device, images) -> float:
    """Model FLOPs of one training step, on the explicit-attention path (see the module doc)."""
    from torch.utils.flop_counter import FlopCounterMode
    _, step = build(args, device, original=True)
    with FlopCounterMode(display=False) as fc:
        step(images, 0, 0, 0.996)
    return float(fc.get_total_flops())


def run(args, device, original: bool, warmup: int, iters: int, images, flops: float) -> dict:
    from ssvit.utils.compile import compile_seconds
    _, step = build(args, device, original)
    compiled_before = compile_seconds()
    for i in range(warmup):  # with --compile, tracing / compilation happens here (reported apart)
        step(images, 0, i, 0.996)
    compile_s = compile_seconds() - compiled_before
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(iters):
        r = step(images, 0, i, 0.996)
        if r.skipped:
            raise RuntimeError("the benchmark step produced a non-finite loss")
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"s_per_iter": dt, "img_per_s": args.batch_size_per_gpu / dt, "model_tflop_per_iter": flops / 1e12,
            "achieved_tflops": flops / dt / 1e12, "peak_mem_gib": peak, "compile_seconds": compile_s}


def original_transform(args):
    """main_dino.py's DataAugmentationDINO: PIL ops, torchvision ToTensor + Normalize."""
    from torchvision import transforms
    from ssvit.data.transforms import GaussianBlur, Solarization, flip_and_color_jitter
    bicubic = transforms.InterpolationMode.BICUBIC
    fcj = flip_and_color_jitter()
    norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    g1 = transforms.Compose([transforms.RandomResizedCrop(args.global_crops_size, scale=tuple(args.global_crops_scale),
                                                          interpolation=bicubic), fcj, GaussianBlur(1.0), norm])
    g2 = transforms.Compose([transforms.RandomResizedCrop(args.global_crops_size, scale=tuple(args.global_crops_scale),
                                                          interpolation=bicubic), fcj, GaussianBlur(0.1),
                             Solarization(0.2), norm])
    loc = transforms.Compose([transforms.RandomResizedCrop(args.local_crops_size, scale=tuple(args.local_crops_scale),
                                                           interpolation=bicubic), fcj, GaussianBlur(p=0.5), norm])
    return lambda im: [g1(im), g2(im)] + [loc(im) for _ in range(args.local_crops_number)]


def original_epoch(args) -> float:
    """One epoch of facebookresearch/dino's ``train_one_epoch`` on the CPU, eager, with its code paths
    (see the module doc); returns the loop's seconds. The modules are ssvit's DINO modules (the same
    state-dict layout and numerics) with the fused attention switched off."""
    import math
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from ssvit.objectives.schedules import cosine_scheduler
    from ssvit.utils.params import cancel_gradients_last_layer
    fix_random_seeds(args.seed)
    method = get_method("dino")(args)
    for m in method.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    student, teacher, dino_loss = method.student, method.teacher, method.criterion
    data = datasets.ImageFolder(args.data_path, transform=original_transform(args))
    loader = DataLoader(data, batch_size=args.batch_size_per_gpu, shuffle=True, num_workers=args.num_workers,
                        drop_last=True)
    optimizer = torch.optim.AdamW(method.param_groups(student), foreach=False)  # torch 1.7's AdamW: a loop
    n = len(loader)
    lr_schedule = cosine_scheduler(args.lr * args.batch_size_per_gpu / 256., args.min_lr, args.epochs, n,
                                   warmup_epochs=args.warmup_epochs)
    wd_schedule = cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, n)
    momentum_schedule = cosine_scheduler(args.momentum_teacher, 1, args.epochs, n)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        for it, (images, _) in enumerate(loader):
            it = n * epoch + it
            for i, g in enumerate(optimizer.param_groups):
                g["lr"] = lr_schedule[it]
                if i == 0:
                    g["weight_decay"] = wd_schedule[it]
            teacher_output = teacher(images[:2])
            student_output = student(images)
            loss = dino_loss(student_output, teacher_output, epoch)
            if not math.isfinite(loss.item()):
                raise RuntimeError("non-finite loss")
            optimizer.zero_grad()
            loss.backward()
            if args.clip_grad:
                clip_gradients_original(student, args.clip_grad)
            cancel_gradients_last_layer(epoch, student, args.freeze_last_layer)
            optimizer.step()
            with torch.no_grad():
                m = momentum_schedule[it]
                for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                    param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
            print(f"it {it} loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.3g}", flush=True)
        os.makedirs(args.output_dir, exist_ok=True)
        torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(),
                    "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "dino_loss": dino_loss.state_dict()},
                   os.path.join(args.output_dir, "checkpoint.pth"))
    return time.perf_counter() - t0


def sample_image_folder(root: str, n: int = 128, size=(500, 375)) -> str:
    """An ImageFolder of ``n`` JPEGs (random crops of scikit-image's photos at ImageNet-like size), made once."""
    import numpy as np
    from PIL import Image
    import skimage.data as sk
    train = os.path.join(root, "train")
    if os.path.isdir(train) and sum(len(f) for _, _, f in os.walk(train)) == n:
        return train
    photos = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.hubble_deep_field(),
              sk.immunohistochemistry(), sk.retina()]
    rng = np.random.default_rng(0)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        d = os.path.join(train, f"c{i % 4}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(p[y:y + ch, x:x + cw]).convert("RGB").resize(size, Image.BICUBIC).save(
            os.path.join(d, f"{i:04d}.jpg"), quality=90)
    return train


def compare_epoch(rest: list, rounds: int, json_path: Optional[str]) -> dict:
    """Alternating rounds of whole-process wall time: ``main_pretrain.py REST`` vs ``benchmark.py --baseline REST``."""
    import statistics
    import subprocess
    import tempfile
    rest = list(rest)
    tmp = tempfile.mkdtemp(prefix="ssvit_epoch_bench_")
    if "--data_path" not in rest:
        rest += ["--data_path", sample_image_folder(os.path.join(tmp, "data"))]
    rows = []
    for r in range(rounds):
        row = {}
        for name in (("ssvit", "original") if r % 2 == 0 else ("original", "ssvit")):
            out = os.path.join(tmp, f"{name}_{r}")
            cmd = [sys.executable, os.path.join(ROOT, "main_pretrain.py"), *rest, "--output_dir", out] \
                if name == "ssvit" else [sys.executable, os.path.abspath(__file__), "--baseline", *rest,
                                         "--output_dir", out]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            row[name] = time.perf_counter() - t0
            if p.returncode != 0:
                raise RuntimeError(f"{name} run failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        row["ratio"] = row["original"] / row["ssvit"]
        rows.append(row)
        print(f"round {r}: ssvit {row['ssvit']:.1f} s, original {row['original']:.1f} s, ratio {row['ratio']:.2f}x",
              flush=True)
    med = statistics.median(r["ratio"] for r in rows)
    print(f"median speed-up ssvit / original (whole process, {rounds} rounds): {med:.2f}x")
    out = {"rounds": rows, "median_ratio": med, "argv": rest}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--warmup_iters", type=int, default=3)
    extra.add_argument("--iters", type=int, default=10)
    extra.add_argument("--peak_tflops", type=float, default=None,
                       help="device peak for MFU (default: the dense peak of the chip at the precision used, "
                            "see PEAK_TFLOPS; none on CPU)")
    extra.add_argument("--measure_peak", action="store_true",
                       help="use a measured 4096^3 matmul as the peak for MFU (CPUs; GPUs not in the table): "
                            "MFU is then the share of the step's model FLOPs run at the chip's own GEMM speed")
    extra.add_argument("--compare_original", action="store_true")
    extra.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    extra.add_argument("--baseline", action="store_true", help="one epoch of the original DINO loop (eager, CPU)")
    extra.add_argument("--compare_epoch", action="store_true",
                       help="whole-process epochs: main_pretrain.py against --baseline, alternating rounds")
    extra.add_argument("--rounds", type=int, default=4)
    known, rest = extra.parse_known_args(argv)
    if known.compare_epoch:
        return compare_epoch(rest, known.rounds, known.json)
    if known.baseline:
        args = parse_with_config(get_args_parser(rest), rest)
        validate_args(args)
        secs = original_epoch(args)
        print(f"original DINO loop: {secs:.1f} s for the epoch")
        return {"loop_seconds": secs}
    args = parse_with_config(get_args_parser(rest), rest)
    validate_args(args)
    get_method(args.method).check_args(args)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    amp_dtype = select_amp_dtype(device, args.use_fp16, args.amp_dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    peak = known.peak_tflops
    if peak is None and device.type == "cuda":
        peak = peak_tflops(where, amp_dtype, args.tf32)
    if peak is None and known.measure_peak:
        peak = measured_matmul_tflops(device, amp_dtype)
        print(f"measured matmul peak: {peak:.3f} TFLOP/s (4096^3, {precision_label(device, amp_dtype, args.tf32)})")
    precision = precision_label(device, amp_dtype, args.tf32)
    crops = f"2x{args.global_crops_size} + {args.local_crops_number}x{args.local_crops_size}"
    print(f"{args.method} {args.arch}/{args.patch_size}, crops {crops}, batch {args.batch_size_per_gpu}, "
          f"{precision}{', torch.compile' if args.compile else ''}, {where}" + (f", peak {peak} TFLOP/s" if peak else ""))
    probe, _ = build(args, device, original=False)
    images = make_batch(probe, args, device)
    del probe
    flops = count_flops(args, device, images)
    results = {"ssvit": run(args, device, False, known.warmup_iters, known.iters, images, flops)}
    if known.compare_original:
        results["original_code_paths"] = run(args, device, True, known.warmup_iters, known.iters, images, flops)
    for name, r in results.items():
        mfu = f"  MFU {100 * r['achieved_tflops'] / peak:.1f}%" if peak else ""
        if peak:
            r["mfu"] = r["achieved_tflops"] / peak
        print(f"{name:>20}: {r['img_per_s']:8.1f} img/s  {r['s_per_iter'] * 1000:8.1f} ms/iter  "
              f"{r['achieved_tflops']:.3f} TFLOP/s achieved ({r['model_tflop_per_iter']:.4f} TFLOP/iter){mfu}  "
              f"peak mem {r['peak_mem_gib']:.2f} GiB"
              + (f"  (compile {r['compile_seconds']:.1f} s, in the warm-up)" if r["compile_seconds"] else ""))
    if known.compare_original:
        ratio = results["ssvit"]["img_per_s"] / results["original_code_paths"]["img_per_s"]
        print(f"speed-up ssvit / original code paths: {ratio:.2f}x")
        results["speedup"] = ratio
    if known.json:
        with open(known.json, "w") as f:
            json.dump({"args": vars(args) | {"global_crops_scale": list(args.global_crops_scale),
                                            "local_crops_scale": list(args.local_crops_scale)},
                       "device": where, "precision": precision, "peak_tflops": peak, "results": results},
                      f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
