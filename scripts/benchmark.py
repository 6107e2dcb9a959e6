#!/usr/bin/env python
"""Pretraining throughput benchmark: img/s, peak memory and model-FLOPs utilisation (MFU).

Times complete training iterations of a method (teacher + student forward on the multi-crop batch,
loss, backward, per-parameter clipping, optimizer step, EMA) on one batch made by the method's own
transform (crops, iBOT masks, SERE overlap grids) from random images, so the figure isolates the
model/engine from data loading. ``--method dino | ibot | ibot_sere | dino_sere | esvit``. Every pretraining flag applies
(``--arch``, ``--patch_size``, crops, ``--batch_size_per_gpu``, ``--use_fp16``/``--amp_dtype``...).

``--compare_original`` also times, in the same process, the original DINO code paths that ssvit
replaced (explicit softmax attention instead of ``F.scaled_dot_product_attention``; per-parameter
clipping with one host sync per tensor) and prints the speed ratio.

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

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from main_pretrain import get_args_parser  # noqa: E402
from ssvit.config import parse_with_config  # noqa: E402
from ssvit.engine.distributed import resolve_device  # noqa: E402
from ssvit.engine.optim import build_optimizer  # noqa: E402
from ssvit.engine.pretrain import fix_random_seeds, validate_args  # noqa: E402
from ssvit.methods import get_method  # noqa: E402


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


def run(args, device, original: bool, warmup: int, iters: int) -> dict:
    from ssvit.engine.optim import clip_gradients
    fix_random_seeds(args.seed)
    method = get_method(args.method)(args).to(device)
    for m in method.modules():  # timm Attention: fused SDPA unless told otherwise
        if hasattr(m, "fused_attn"):
            m.fused_attn = not original
    opt = build_optimizer(args.optimizer, method.param_groups(method.student))
    amp_dtype, scaler = None, None
    if device.type == "cuda" and args.use_fp16:
        amp_dtype = torch.bfloat16 if args.amp_dtype in ("auto", "bf16") and torch.cuda.is_bf16_supported() \
            else torch.float16
        if amp_dtype == torch.float16:
            scaler = torch.amp.GradScaler("cuda")
    clip = clip_gradients_original if original else clip_gradients
    images = make_batch(method, args, device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = method.training_step(method.student, images, 0, 0)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        clip(method.student, args.clip_grad)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        method.update_teacher(0.996)
        return loss

    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
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
                       help="device peak for MFU (default: 989 for H100 bf16, 1979/2 fp16 alike; none on CPU)")
    extra.add_argument("--compare_original", action="store_true")
    extra.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    known, rest = extra.parse_known_args(argv)
    args = parse_with_config(get_args_parser(rest), rest)
    validate_args(args)
    get_method(args.method).check_args(args)
    device = resolve_device(args.device)
    peak = known.peak_tflops
    if peak is None and device.type == "cuda" and "H100" in torch.cuda.get_device_name():
        peak = 989.0 if args.use_fp16 else 67.0
    if peak is None and device.type == "cuda" and "H200" in torch.cuda.get_device_name():
        peak = 989.0 if args.use_fp16 else 67.0
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    precision = "fp32" if device.type == "cpu" or not args.use_fp16 else args.amp_dtype
    crops = f"2x{args.global_crops_size} + {args.local_crops_number}x{args.local_crops_size}"
    print(f"{args.method} {args.arch}/{args.patch_size}, crops {crops}, batch {args.batch_size_per_gpu}, "
          f"{precision}, {where}")
    results = {"ssvit": run(args, device, False, known.warmup_iters, known.iters)}
    if known.compare_original:
        results["original_code_paths"] = run(args, device, True, known.warmup_iters, known.iters)
    for name, r in results.items():
        mfu = f"  MFU {100 * r['achieved_tflops'] / peak:.1f}%" if peak else ""
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
                       "device": where, "results": results}, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
