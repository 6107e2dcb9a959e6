"""The pretraining optimizer (DINO ``utils.py``): AdamW, SGD or LARS over the task's parameter groups."""
from __future__ import annotations

import torch

from ..utils.lars import LARS


def fused_adamw_wanted(setting: str, device: torch.device) -> bool:
    """``--fused_adamw``: ``auto`` = the fused kernel on GPU, PyTorch's per-parameter loop on CPU (the
    original's CPU numerics, bit for bit); ``true`` = the fused kernel on either (on CPU 0.46 vs 2.1 ms
    per step for the default job's vit_shallow + DINO head, 29 tensors; equal to the loop within an ulp or
    two per step);
    ``false`` = the loop (foreach on GPU) everywhere."""
    if isinstance(setting, bool):
        setting = "true" if setting else "false"
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"--fused_adamw must be auto, true or false, got {setting!r}")
    return device.type == "cuda" if setting == "auto" else setting == "true"


def build_optimizer(name: str, param_groups: list[dict], fused: bool = False) -> torch.optim.Optimizer:
    """``fused``: AdamW's fused kernel (CUDA or CPU: one call for all parameters); ignored for SGD / LARS."""
    if name == "adamw":
        # lr and wd are set by the schedules every step
        return torch.optim.AdamW(param_groups, fused=True) if fused else torch.optim.AdamW(param_groups)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=0, momentum=0.9)
    if name == "lars":
        return LARS(param_groups)
    raise ValueError(f"--optimizer must be adamw, sgd or lars, got {name!r}")
