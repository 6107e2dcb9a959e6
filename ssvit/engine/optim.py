"""Optimizers (DINO ``utils.py``): AdamW, SGD, LARS. Parameter groups, clipping and last-layer freezing
live in the bottom layer, ``ssvit.utils.params`` (methods use them too)."""
from __future__ import annotations

import torch


from ..utils.params import cancel_gradients_last_layer, clip_gradients, get_params_groups  # noqa: F401


class LARS(torch.optim.Optimizer):
    """LARS as in DINO's ``utils.LARS`` (no weight decay nor adaptation on 1-D parameters)."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001,
                 weight_decay_filter=None, lars_adaptation_filter=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                if p.ndim != 1:
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


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
