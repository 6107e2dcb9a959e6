"""Schedule services the engine offers to tasks (float64 NumPy arrays, one value per iteration)."""
from __future__ import annotations

import argparse
from typing import Optional

from ..objectives.schedules import cosine_scheduler
from .task import Schedules


def linear_scaled_cosine(args: argparse.Namespace, niter_per_ep: int, bs_total: int,
                         momentum_teacher: Optional[float] = None) -> Schedules:
    """DINO's ``main_dino.py`` schedules (iBOT, EsViT, SERE, SiT-v2 and MAE's finetuning use the same):
    lr = cosine from ``--lr x bs_total / 256`` (linear scaling) to ``--min_lr`` after a linear warm-up
    of ``--warmup_epochs``; weight decay = cosine from ``--weight_decay`` to ``--weight_decay_end``;
    teacher momentum = cosine from ``momentum_teacher`` to 1 (tasks with an EMA teacher pass theirs), else None."""
    lr = cosine_scheduler(args.lr * bs_total / 256.0, args.min_lr, args.epochs, niter_per_ep,
                          warmup_epochs=args.warmup_epochs)
    wd = cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, niter_per_ep)
    momentum = None if momentum_teacher is None else cosine_scheduler(momentum_teacher, 1, args.epochs, niter_per_ep)
    return Schedules(lr, wd, momentum)
