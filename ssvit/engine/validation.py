"""Validation services for tasks: the validation split's loader and the weighted-mean evaluation loop.

A task's ``validate`` hook builds its loader once with ``validation_loader`` and evaluates with
``weighted_mean``, giving only what is its own: the transform and a function of one batch. RelViT
(Lightning's per-epoch validation), finetuning (DeiT / MAE ``evaluate``) and SiT-v1 (its SSL losses as
metrics) use them; none re-implements the loop.
"""
from __future__ import annotations

import argparse
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn


class ValidationData(NamedTuple):
    """``loader`` over this rank's share of the validation split; ``size`` the whole split's length."""
    loader: Iterable
    size: int


def validation_loader(args: argparse.Namespace, transform: Callable, batch_size: int, *, seed: Optional[int] = None,
                      shard: bool = False) -> ValidationData:
    """The validation split of ``--dataset`` at ``--data_path`` (``val/`` for ImageFolder layouts),
    transformed, in order. ``seed``: per-sample seeded randomness (``TransformedDataset``). ``shard``
    under a process group of W ranks: rank r takes samples r, r + W, ... -- no padded duplicates (unlike
    ``DistributedSampler``), so sums over the ranks are exact."""
    from torch.utils.data import DataLoader, Subset

    from ..data import build_dataset, split_root
    from ..data.datasets import TransformedDataset
    from ..utils.distributed import get_rank, get_world_size, is_dist
    base = build_dataset(args.dataset, split_root(args.dataset, args.data_path, "val"), train=False,
                         download=args.download, synthetic_size=args.synthetic_size)
    ds = TransformedDataset(base, transform, seed=seed)
    if shard and is_dist() and get_world_size() > 1:
        ds = Subset(ds, range(get_rank(), len(ds), get_world_size()))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=args.num_workers)
    return ValidationData(loader, len(base))


@torch.no_grad()
def weighted_mean(model: nn.Module, loader: Iterable, evaluate_batch: Callable, *, all_reduce: bool = False,
                  keys: Sequence[str] = ()) -> dict[str, float]:
    """Mean of each metric over the samples: ``evaluate_batch(model, item, device) -> (n, {name: value})``
    gives one loader item's sample count and per-sample-mean metrics; each is weighted by ``n``. The
    model runs in eval mode (its mode is restored after). ``all_reduce``: sums and counts are added over
    the ranks (float64) before dividing -- the exact mean of a sharded split; ``keys`` names the metrics up front, so a rank whose share is
    empty still hands the same vector to the all-reduce."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    sums: dict[str, float] = {k: 0.0 for k in keys}
    n = 0
    try:
        for item in loader:
            b, metrics = evaluate_batch(model, item, device)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
            n += b
    finally:
        model.train(was)
    if all_reduce:
        from ..utils.distributed import collective_device, is_dist
        if is_dist():
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys] + [n], dtype=torch.float64, device=collective_device())
            torch.distributed.all_reduce(t)
            sums, n = dict(zip(keys, t[:-1].tolist())), t[-1].item()
    return {k: v / max(n, 1) for k, v in sums.items()}
