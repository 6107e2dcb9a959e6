"""Parameter groups, optimizers, gradient clipping and last-layer freezing (DINO ``utils.py``)."""
from __future__ import annotations

import torch
import torch.nn as nn


def get_params_groups(model: nn.Module) -> list[dict]:
    """[regularised, not regularised]: names ending in ``.bias`` and 1-D tensors get no weight decay.

    QUIRK kept: every other tensor is decayed, ``pos_embed`` and ``cls_token`` included; frozen
    parameters (e.g. ``last_layer.weight_g`` with norm_last_layer) are left out.
    """
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


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


def build_optimizer(name: str, param_groups: list[dict], fused: bool = False) -> torch.optim.Optimizer:
    """``fused``: AdamW's fused CUDA kernel (one launch for all parameters); ignored for SGD / LARS."""
    if name == "adamw":
        # lr and wd are set by the schedules every step
        return torch.optim.AdamW(param_groups, fused=True) if fused else torch.optim.AdamW(param_groups)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=0, momentum=0.9)
    if name == "lars":
        return LARS(param_groups)
    raise ValueError(f"--optimizer must be adamw, sgd or lars, got {name!r}")


def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """Per-parameter clipping: each gradient tensor is scaled to norm <= ``clip`` independently
    (``coef = clip / (norm + 1e-6)``, applied when < 1), as DINO -- not a global-norm clip.

    Vectorised with ``torch._foreach_*`` and no host synchronisation (the original calls
    ``.item()`` per parameter); multiplying by a coefficient clamped to 1 leaves unclipped
    gradients bit-identical. Returns the per-parameter norms (before clipping) as a tensor.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch._foreach_norm(grads, 2)
    coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
    return torch.stack(norms)


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the gradients of every parameter named ``*last_layer*`` while ``epoch < freeze_last_layer``."""
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None
