"""Projection heads of the DINO family.

``DINOHead`` follows Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers" (ICCV 2021), facebookresearch/dino ``vision_transformer.py``: an MLP with a
bottleneck, L2 normalisation and a weight-normalised prototype layer. Parameter names equal
the original's, so released heads load without renaming.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ..utils.precision import fp32_island


class WeightNormLinear(nn.Module):
    """Bias-free ``Linear`` with weight normalisation along dim 0 (one norm per output row).

    Numerically the legacy ``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))``
    with the same parameter names ``weight_g`` (out, 1) and ``weight_v`` (out, in), so the
    original checkpoints' ``last_layer.weight_g`` / ``last_layer.weight_v`` load as they are.
    Input (..., in) -> output (..., out).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=False)  # PyTorch default (kaiming-uniform) init
        self.in_features, self.out_features = in_features, out_features
        # registration order g, v as legacy weight_norm: named_parameters (hence optimizer state) order
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(linear.weight.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    @fp32_island  # the prototype layer stays fp32 under bf16 autocast
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _init_dino_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)


class DINOHead(nn.Module):
    """DINO projection head.

    Args mirror the original: ``DINOHead(in_dim, out_dim, use_bn=False, norm_last_layer=True,
    nlayers=3, hidden_dim=2048, bottleneck_dim=256)``.
    Input (B, in_dim) -> logits (B, out_dim). Keys: ``mlp.{0,2,4}`` (``use_bn``: ``mlp.{0,1,3,4,6}``),
    ``last_layer.weight_g``, ``last_layer.weight_v``.
    With ``norm_last_layer`` the prototype norms ``weight_g`` are frozen at 1.
    """

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_dino_weights)  # before last_layer exists, as the original
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)
