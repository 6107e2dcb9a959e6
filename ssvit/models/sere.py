"""SERE feature self-relation heads and the multi-crop wrapper that aligns relations across views.

Li et al., "SERE: Exploring Feature Self-relation for Self-supervised Transformers" (TPAMI 2023),
MCG-NKU/SERE ``models/head.py``, ``models/vision_transformer.py`` and ``utils.py``. The heads live
on the backbone under the original names (``channel_sere``, ``pixel_sere`` and ``*_local`` twins),
so SERE checkpoints load; they read the last block's patch tokens *before* the final norm.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .multicrop import MultiCropWrapper


def _tokens_to_map(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) patch tokens -> (B, C, sqrt(N), sqrt(N))."""
    B, N, C = x.shape
    side = int(math.sqrt(N))
    if side * side != N:
        raise ValueError(f"SERE needs a square token grid, got {N} tokens")
    return x.transpose(2, 1).reshape(B, C, side, side)


class _RelationHead(nn.Module):
    """Projection ReLU(BN(z)) and predictor ReLU(BN(Conv1x1(z))) (conv: PyTorch default init)."""

    def __init__(self, dim: int):
        super().__init__()
        self.projection = nn.Sequential(nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.predictor = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection(_tokens_to_map(x))
        return z, self.predictor(z)


class ChannelSERE(_RelationHead):
    """Channel self-relation. Input patch tokens (B, N, C) -> ``(relation_z, relation_p)`` each
    (B, C, C) = (f / size)(f / size)^T over positions. The original divides by a fixed ``size``
    (14 for global crops, 6 for local ones, i.e. the mean over positions at 224/96 px, patch 16)."""

    def forward(self, x: torch.Tensor, size: float = 14) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, C = x.shape
        z, p = self.project(x)
        z = z.reshape(B, C, -1) / size
        p = p.reshape(B, C, -1) / size
        return z @ z.transpose(-2, -1), p @ p.transpose(-2, -1)


class PixelSERE(_RelationHead):
    """Spatial (pixel) self-relation per head. Input (B, N, C) -> ``(relation_z, relation_p)`` each
    (B, heads, N, N) = f_h f_h^T * (C/heads)^-0.5, channel ``c`` in head ``c // (C/heads)``."""

    def __init__(self, dim: int, num_heads: int = 6):
        super().__init__(dim)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, C = x.shape
        z, p = self.project(x)
        p = p.reshape(B, self.num_heads, C // self.num_heads, -1).permute(0, 1, 3, 2)
        z = z.reshape(B, self.num_heads, C // self.num_heads, -1).permute(0, 1, 3, 2)
        return (z @ z.transpose(-2, -1)) * self.scale, (p @ p.transpose(-2, -1)) * self.scale


def add_sere_heads(backbone: nn.Module, local: bool) -> nn.Module:
    """Attach SERE's relation heads to a ViT (``local``: the ``*_local`` twins for local crops)."""
    dim, heads = backbone.embed_dim, backbone.blocks[0].attn.num_heads
    backbone.channel_sere = ChannelSERE(dim)
    backbone.pixel_sere = PixelSERE(dim, heads)
    if local:
        backbone.channel_sere_local = ChannelSERE(dim)
        backbone.pixel_sere_local = PixelSERE(dim, heads)
    return backbone


def _resample_axis(relation: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample the last axis (N positions of a square map) of (b, h, m, N) at ``grid`` (b, s, s, 2)
    -> (b, h, s*s, m): bilinear, zero padding, align_corners=False, in fp32 (as the original)."""
    b, h, m, n = relation.shape
    side = int(math.sqrt(n))
    out = F.grid_sample(relation.reshape(b, h * m, side, side).float(), grid.float(), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.reshape(b, h, m, -1).transpose(3, 2)


def align_relation(relation: torch.Tensor, grid_keys: torch.Tensor, grid_queries: torch.Tensor) -> torch.Tensor:
    """Resample a pixel relation (b, h, N, N) to the views' overlap: keys (last axis) at
    ``grid_keys`` (b, s_k, s_k, 2), then queries at ``grid_queries`` (b, s_q, s_q, 2) ->
    (b, h, s_q^2, s_k^2) float32. Grid coordinates in [-1, 1] over the crop (x first)."""
    r = _resample_axis(relation, grid_keys)        # (b, h, s_k^2, N)
    return _resample_axis(r, grid_queries)         # (b, h, s_q^2, s_k^2)


def sampling(relation: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """SERE's ``sampling``: ``align_relation`` with the same grid on both axes."""
    return align_relation(relation, grid, grid)


class SEREOutput(NamedTuple):
    """What ``SEREMultiCropWrapper`` returns (None where a crop group does not produce it)."""
    head_out: Any                                  # the head's output on all crops of the call
    relation_channel: Optional[torch.Tensor]       # global crops: channel relation (z teacher / p student)
    relation_pixel: Optional[torch.Tensor]         # global crops: pixel relation aligned on the overlap grids
    relation_channel_local: Optional[torch.Tensor]  # local crops (student): channel relation
    relation_pixel_local: Optional[torch.Tensor]   # local crops (student): pixel relation
    relation_pixel_global: Optional[torch.Tensor]  # global crops: pixel relation before the alignment
    backbone_feat: Optional[torch.Tensor] = None   # with ``return_backbone_feat``: the backbone's output


class SEREMultiCropWrapper(MultiCropWrapper):
    """MultiCropWrapper that also returns SERE's relations (MCG-NKU/SERE ``utils.MultiCropWrapper``).

    ``forward(x, grid1=None, grid2=None, masks=None, teacher=False)`` -> ``SEREOutput`` (head_out,
    relation_channel, relation_pixel, relation_channel_local, relation_pixel_local,
    relation_pixel_global, backbone_feat). With grids (global crops), relations are the projection ``z`` for the
    teacher and the predictor ``p`` for the student; the pixel relation is aligned with keys at
    ``cat(grid2)`` and queries at ``cat(grid1)`` and also returned unaligned as
    ``relation_pixel_global``. Without grids (local crops, student) the predictor relations go to
    the ``*_local`` outputs. QUIRK (kept): the local heads (and the 6-px channel divisor) are used
    only when the group's cumulative crop count exceeds 2, so with <= 2 local crops the global heads
    process them. The backbone's output (CLS, or all tokens when ``return_all_tokens``) feeds the head.
    """

    def __init__(self, backbone: nn.Module, head: Optional[nn.Module] = None,
                 channel_sizes: Sequence[float] = (14, 6)):
        super().__init__(backbone, head)
        self.channel_sizes = tuple(channel_sizes)

    def _backbone_relations(self, x: torch.Tensor, mask: Optional[torch.Tensor], local_crop: bool):
        bb = self.backbone
        tokens = bb.forward_blocks(x, mask)
        patches = tokens[:, bb.num_prefix_tokens:]
        if local_crop:
            ch = bb.channel_sere_local(patches, size=self.channel_sizes[1])
            px = bb.pixel_sere_local(patches)
        else:
            ch = bb.channel_sere(patches, size=self.channel_sizes[0])
            px = bb.pixel_sere(patches)
        out = bb.norm(tokens)
        if not bb.return_all_tokens:
            out = out[:, 0]
        return out, ch, px

    def forward(self, x, grid1=None, grid2=None, masks=None, teacher: bool = False, return_backbone_feat=False):
        if not isinstance(x, (list, tuple)):
            x = [x]
            masks = [masks] if masks is not None else None
        outputs, start = [], 0
        rel_channel = rel_pixel = rel_pixel_global = rel_channel_local = rel_pixel_local = None
        for end in self.group_boundaries(x):
            mask = torch.cat(masks[start:end]) if masks is not None else None
            out, (ch_z, ch_p), (px_z, px_p) = self._backbone_relations(torch.cat(x[start:end]), mask, end > 2)
            outputs.append(out)
            if grid1 is not None and grid2 is not None:
                rel_pixel, rel_channel = (px_z, ch_z) if teacher else (px_p, ch_p)
                rel_pixel_global = rel_pixel
                rel_pixel = align_relation(rel_pixel, torch.cat(list(grid2)), torch.cat(list(grid1)))
            else:
                if teacher:
                    raise ValueError("the SERE teacher runs on global crops with their overlap grids")
                rel_pixel_local, rel_channel_local = px_p, ch_p
            start = end
        feats = torch.cat(outputs)
        head_out = self.head(feats)
        return SEREOutput(head_out, rel_channel, rel_pixel, rel_channel_local, rel_pixel_local, rel_pixel_global,
                          feats if return_backbone_feat else None)
