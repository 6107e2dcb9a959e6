"""Schedules shared by the DINO-family objectives and the training engine (float64 NumPy arrays)."""
from __future__ import annotations

import numpy as np


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """Per-iteration cosine schedule with linear warm-up, as DINO's ``utils.cosine_scheduler``.

    Returns an array of length ``epochs * niter_per_ep``. The warm-up ``linspace`` includes its end
    point, so the peak value appears twice (last warm-up step and first cosine step), and the final
    value is approached but never reached -- both exactly as the original.
    """
    warmup_iters = warmup_epochs * niter_per_ep
    warmup_schedule = np.array([])
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float,
                          warmup_teacher_temp_epochs: int, nepochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linear warm-up (end point included), then constant.

    Length ``nepochs``; the final value is first used at epoch ``warmup_teacher_temp_epochs - 1``.
    """
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
    ))


def patch_temp_schedule(warmup_teacher_temp2: float, teacher_temp2: float, warmup_teacher_temp_epochs: int,
                        nepochs: int, mim_start_epoch: int = 0) -> np.ndarray:
    """iBOT's per-epoch patch temperature: as ``teacher_temp_schedule`` when ``mim_start_epoch == 0``;
    otherwise held at the warm-up value for ``mim_start_epoch`` epochs, then warmed up, then constant."""
    if mim_start_epoch == 0:
        return teacher_temp_schedule(warmup_teacher_temp2, teacher_temp2, warmup_teacher_temp_epochs, nepochs)
    return np.concatenate((
        np.ones(mim_start_epoch) * warmup_teacher_temp2,
        np.linspace(warmup_teacher_temp2, teacher_temp2, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs - mim_start_epoch) * teacher_temp2,
    ))


def timm_cosine_per_epoch(base_lr: float, epochs: int, warmup_lr: float, warmup_epochs: int,
                          min_lr: float) -> np.ndarray:
    """The lr of each epoch under timm's ``CosineLRScheduler(t_initial=epochs, lr_min, warmup_lr_init,
    warmup_t, cycle_limit=1)`` stepped with ``step(epoch)`` after each epoch, as DeiT / SiT-v1: epoch 0
    runs at ``warmup_lr`` (at the base lr without warm-up) and epoch e >= 1 at the scheduler's value
    for e - 1 (so the warm-up start value is used twice). Length ``epochs``."""
    def at(t):
        if t < warmup_epochs:
            return warmup_lr + t * (base_lr - warmup_lr) / warmup_epochs
        if t >= epochs:
            return min_lr
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + np.cos(np.pi * t / epochs))
    first = warmup_lr if warmup_epochs > 0 else base_lr  # without warm-up timm leaves the optimizer's lr
    return np.array([first if e == 0 else at(e - 1) for e in range(epochs)], dtype=np.float64)


def timm_epoch_schedules(base_lr: float, epochs: int, warmup_lr: float, warmup_epochs: int, min_lr: float,
                         weight_decay: float, niter_per_ep: int) -> dict:
    """The engine's per-iteration schedules for DeiT / SiT-v1 recipes: ``timm_cosine_per_epoch`` held over
    each epoch's iterations, a constant weight decay, no teacher momentum."""
    per_epoch = timm_cosine_per_epoch(base_lr, epochs, warmup_lr, warmup_epochs, min_lr)
    return {"lr": np.repeat(per_epoch, niter_per_ep), "wd": np.full(epochs * niter_per_ep, weight_decay, dtype=np.float64),
            "momentum": None}
