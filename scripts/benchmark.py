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

Example: python scripts/benchmark.py --arch vit_small --patch_size 16 --batch_size_per_gpu 64 \
             --local_crops_number 10 --device cuda --compare_original
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
sys.path.insert(0, ROOT)

from main_pretrain import get_args_parser  # noqa: E402
from ssvit.config import parse_with_config  # noqa: E402
from ssvit.engine.distributed import resolve_device  # noqa: E402
from ssvit.engine.optim import build_optimizer, clip_gradients  # noqa: E402
from ssvit.engine.pretrain import fix_random_seeds, validate_args  # noqa: E402
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
    """One batch exactly as the data loader would give it (the method's own transform: crops, and
    masks / overlap grids where the method uses them) on random images, moved to ``device``."""
    import numpy as np
    from PIL import Image
    from torch.utils.data import default_collate

    from ssvit.engine.pretrain import to_device
    transform = method.build_transform(args)
    rng = np.random.RandomState(args.seed)
    side = max(args.global_crops_size, 32)
    imgs = [Image.fromarray((rng.rand(side, side, 3) * 255).astype(np.uint8)) for _ in range(args.batch_size_per_gpu)]
    return to_device(default_collate([transform(im) for im in imgs]), device)


def build(args, device, original: bool):
    fix_random_seeds(args.seed)
    method = get_method(args.method)(args).to(device)
    for m in method.modules():  # timm Attention: fused SDPA unless told otherwise
        if hasattr(m, "fused_attn"):
            m.fused_attn = not original
    opt = build_optimizer(args.optimizer, method.param_groups(method.student),
                          fused=device.type == "cuda" and not original)
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
    _, step = build(args, device, original)
    for i in range(warmup):
        step(images, 0, i, 0.996)
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
            "achieved_tflops": flops / dt / 1e12, "peak_mem_gib": peak}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--warmup_iters", type=int, default=3)
    extra.add_argument("--iters", type=int, default=10)
    extra.add_argument("--peak_tflops", type=float, default=None,
                       help="device peak for MFU (default: the dense peak of the chip at the precision used, "
                            "see PEAK_TFLOPS; none on CPU)")
    extra.add_argument("--compare_original", action="store_true")
    extra.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    known, rest = extra.parse_known_args(argv)
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
    precision = precision_label(device, amp_dtype, args.tf32)
    crops = f"2x{args.global_crops_size} + {args.local_crops_number}x{args.local_crops_size}"
    print(f"{args.method} {args.arch}/{args.patch_size}, crops {crops}, batch {args.batch_size_per_gpu}, "
          f"{precision}, {where}" + (f", peak {peak} TFLOP/s" if peak else ""))
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
              f"peak mem {r['peak_mem_gib']:.2f} GiB")
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
