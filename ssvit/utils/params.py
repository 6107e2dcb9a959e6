"""Parameter groups, per-parameter gradient clipping and last-layer freezing (DINO ``utils.py``),
used by the methods (their parameter groups and gradient hooks) and by the engine's step."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def get_params_groups(model: nn.Module) -> list[dict]:
    """[regularised, not regularised]: names ending in ``.bias`` and 1-D tensors get no weight decay;
    the regularised group follows the weight-decay schedule (``wd_scale`` 1), the other stays at 0.

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
    return [{"params": regularized, "wd_scale": 1.0}, {"params": not_regularized, "weight_decay": 0.0}]


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


@torch.no_grad()
def constant_ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """timm's ``ModelEma`` step: floating-point state ``e <- decay * e + (1 - decay) * m``, other buffers
    (counters) copied."""
    for e, c in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.is_floating_point():
            e.mul_(decay).add_(c.detach(), alpha=1 - decay)
        else:
            e.copy_(c)


def has_batchnorm(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` holds a BatchNorm layer (SyncBatchNorm conversion, the teacher's ``module.`` prefix)."""
    return module is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
