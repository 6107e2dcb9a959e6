#!/usr/bin/env python
"""k-NN evaluation speed: seconds of ``knn_classifier`` (DINO's weighted vote, chunked over the test
set) on a feature bank of the given size, per similarity precision and test block size, with the
top-1 each reached (half precision may differ from fp32 by near-ties).

The features are random unit vectors with a class structure (class means + noise), so the vote
is not trivial; timings do not depend on the values. Feature extraction is not timed here (see
``eval_knn.py``'s printed seconds).

    python tools/knn_benchmark.py --train 60000 --test 10000 --dim 384 --device cpu
    python tools/knn_benchmark.py --train 60000 --test 10000 --dim 384 --device cuda --dtypes fp32 bf16 fp16
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


from ssvit.evaluation.knn import knn_classifier  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_features(n_train: int, n_test: int, dim: int, classes: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g)
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yte = torch.randint(0, classes, (n_test,), generator=g)
    xtr = F.normalize(means[ytr] + 3 * torch.randn(n_train, dim, generator=g), dim=1)
    xte = F.normalize(means[yte] + 3 * torch.randn(n_test, dim, generator=g), dim=1)
    return xtr.to(device), ytr.to(device), xte.to(device), yte.to(device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=60000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--chunk_size", type=int, nargs="+", default=[256])
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    xtr, ytr, xte, yte = make_features(args.train, args.test, args.dim, args.classes, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"k-NN {args.train} x {args.test}, dim {args.dim}, k={args.k}, {where}")
    rows = []
    for chunk in args.chunk_size:
        for name in args.dtypes:
            best, top1 = float("inf"), None
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                top1, _ = knn_classifier(xtr, ytr, xte, yte, args.k, 0.07, chunk_size=chunk,
                                         similarity_dtype=DTYPES[name])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - t0)
            rows.append({"dtype": name, "chunk_size": chunk, "seconds": best, "top1": top1})
            print(f"  {name:>4}  chunk {chunk:5d}: {best:7.3f} s  top-1 {top1:.2f}")
    out = {"train": args.train, "test": args.test, "dim": args.dim, "k": args.k, "device": where, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
