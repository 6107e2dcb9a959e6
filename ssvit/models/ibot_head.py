"""iBOT's projection head: one MLP for CLS and patch tokens, separate (or shared) prototypes.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer" (ICLR 2022), bytedance/ibot
``models/head.py`` (copied unchanged in MCG-NKU/SERE). Parameter names equal the original's
(``mlp.*``, ``last_layer.weight_{g,v}``, ``last_layer2.weight_{g,v}``), so iBOT checkpoints load.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import WeightNormLinear, _init_dino_weights

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class CSyncBatchNorm(nn.SyncBatchNorm):
    """iBOT's "centering" BN: normalises with the running statistics (running_var forced to ones
    unless ``with_var``), then runs a training-mode pass only to update the running statistics."""

    def __init__(self, *args, with_var: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.with_var = with_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.training
        self.training = False
        if not self.with_var:
            self.running_var = torch.ones_like(self.running_var)
        normed = super().forward(x)
        self.training = was_training
        if was_training:
            super().forward(x)  # statistics update only
        return normed


class PSyncBatchNorm(nn.SyncBatchNorm):
    """SyncBN within groups of ``bunch_size`` consecutive ranks (iBOT). Without a process group it
    is a plain BN. (The original needs ``bunch_size`` but main_ibot.py never passes it, so
    ``--norm_in_head psyncbn`` crashes there; here it defaults to 8 ranks, one node.)"""

    def __init__(self, *args, bunch_size: int = 8, **kwargs):
        import torch.distributed as dist
        group = None
        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
            per = min(bunch_size, world)
            if world % per:
                raise ValueError(f"psyncbn: world size {world} is not a multiple of the bunch size {per}")
            groups = [dist.new_group(list(range(i * per, (i + 1) * per))) for i in range(world // per)]
            group = groups[rank // per]
        super().__init__(*args, process_group=group, **kwargs)


def build_norm(norm: Optional[str], dim: int, **kwargs) -> Optional[nn.Module]:
    if norm is None or norm == "none":
        return None
    builders = {"bn": nn.BatchNorm1d, "syncbn": nn.SyncBatchNorm, "csyncbn": CSyncBatchNorm,
                "psyncbn": PSyncBatchNorm, "ln": nn.LayerNorm}
    if norm not in builders:
        raise ValueError(f"unknown norm type {norm!r}; use one of {', '.join(builders)}")
    if norm == "ln" and "affine" in kwargs:
        kwargs["elementwise_affine"] = kwargs.pop("affine")
    return builders[norm](dim, **kwargs)


def build_act(act: str) -> nn.Module:
    if act == "gelu":
        return nn.GELU()
    if act == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {act!r}; use gelu or relu")


class TokenSequential(nn.Sequential):
    """``nn.Sequential`` whose BatchNorms accept (B, N, C) token tensors (channels moved to dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self:
            if isinstance(module, _BN_TYPES) and x.ndim > 2:
                x = module(x.movedim(-1, 1)).movedim(1, -1)
            else:
                x = module(x)
        return x


class iBOTHead(nn.Module):
    """iBOT head. Input (B, D) -> CLS logits (B, out_dim); input (B, 1+N, D) -> ``(cls (B, out_dim),
    patch (B, N, patch_out_dim))``.

    Args mirror the original ``iBOTHead(in_dim, out_dim, patch_out_dim=8192, norm=None, act='gelu',
    last_norm=None, nlayers=3, hidden_dim=2048, bottleneck_dim=256, norm_last_layer=True,
    shared_head=False)``. QUIRK (kept): one ``norm`` and one activation instance are reused after
    every hidden Linear, so with ``nlayers > 2`` the hidden norms share their parameters. With
    ``shared_head`` ``last_layer2`` *is* ``last_layer`` (both names appear in the state dict).
    ``bottleneck_dim <= 0``: no bottleneck / prototype layer, the last Linear emits the logits.
    """

    def __init__(self, in_dim: int, out_dim: int, patch_out_dim: int = 8192, norm: Optional[str] = None,
                 act: str = "gelu", last_norm: Optional[str] = None, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True, shared_head: bool = False):
        super().__init__()
        norm_m = build_norm(norm, hidden_dim)
        act_m = build_act(act)
        nlayers = max(nlayers, 1)
        final_dim = bottleneck_dim if bottleneck_dim > 0 else out_dim
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, final_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for i in range(nlayers - 1):
                if norm_m is not None:
                    layers.append(norm_m)
                layers.append(act_m)
                layers.append(nn.Linear(hidden_dim, hidden_dim) if i < nlayers - 2 else nn.Linear(hidden_dim, final_dim))
            self.mlp = TokenSequential(*layers)
        self.apply(_init_dino_weights)
        if bottleneck_dim > 0:
            self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
            if norm_last_layer:
                self.last_layer.weight_g.requires_grad = False
        else:
            self.last_layer = None
        self.last_norm = build_norm(last_norm, out_dim, affine=False)

        if not shared_head:
            if bottleneck_dim > 0:
                self.last_layer2 = WeightNormLinear(bottleneck_dim, patch_out_dim)
                if norm_last_layer:
                    self.last_layer2.weight_g.requires_grad = False
            else:
                self.mlp2 = nn.Linear(hidden_dim, patch_out_dim)
                self.last_layer2 = None
            self.last_norm2 = build_norm(last_norm, patch_out_dim, affine=False)
        else:
            if bottleneck_dim > 0:
                self.last_layer2 = self.last_layer
            else:
                self.mlp2 = self.mlp[-1]
                self.last_layer2 = None
            self.last_norm2 = self.last_norm

    def _forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        if self.last_layer is not None:
            x = self.last_layer(F.normalize(x, dim=-1, p=2))
        if self.last_norm is not None:
            x = self.last_norm(x)
        return x

    def forward(self, x: torch.Tensor):
        if x.ndim == 2:
            return self._forward_cls(x)
        if self.last_layer is not None:
            x = F.normalize(self.mlp(x), dim=-1, p=2)
            x1 = self.last_layer(x[:, 0])
            x2 = self.last_layer2(x[:, 1:])
        else:
            x = self.mlp[:-1](x)
            x1 = self.mlp[-1](x[:, 0])
            x2 = self.mlp2(x[:, 1:])
        if self.last_norm is not None:
            x1 = self.last_norm(x1)
            x2 = self.last_norm2(x2)
        return x1, x2
