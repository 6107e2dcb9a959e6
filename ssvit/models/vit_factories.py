"""Registered ViT sizes (DINO's ``vit_tiny`` / ``vit_small`` / ``vit_base``, iBOT's ``vit_large``)
plus small CPU-friendly ones for smoke tests and the embedded default job."""
from __future__ import annotations

from .registry import register_backbone
from .vision_transformer import VisionTransformer


def _vit(embed_dim: int, depth: int, num_heads: int, patch_size: int = 16, **kwargs) -> VisionTransformer:
    kwargs.setdefault("mlp_ratio", 4)
    return VisionTransformer(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             qkv_bias=True, **kwargs)


@register_backbone(aliases=("deit_tiny",))
def vit_tiny(patch_size: int = 16, **kwargs):
    """ViT-Ti: D=192, 12 blocks, 3 heads."""
    return _vit(192, 12, 3, patch_size, **kwargs)


@register_backbone(aliases=("deit_small",))
def vit_small(patch_size: int = 16, **kwargs):
    """ViT-S: D=384, 12 blocks, 6 heads."""
    return _vit(384, 12, 6, patch_size, **kwargs)


@register_backbone
def vit_base(patch_size: int = 16, **kwargs):
    """ViT-B: D=768, 12 blocks, 12 heads."""
    return _vit(768, 12, 12, patch_size, **kwargs)


@register_backbone
def vit_large(patch_size: int = 16, **kwargs):
    """ViT-L: D=1024, 24 blocks, 16 heads (iBOT/SERE)."""
    return _vit(1024, 24, 16, patch_size, **kwargs)


@register_backbone
def vit_pico(patch_size: int = 4, **kwargs):
    """CPU-sized ViT (D=96, 4 blocks, 3 heads) for tests and small images."""
    return _vit(96, 4, 3, patch_size, **kwargs)


@register_backbone
def vit_mini(patch_size: int = 4, **kwargs):
    """CPU-sized ViT (D=192, 6 blocks, 3 heads)."""
    return _vit(192, 6, 3, patch_size, **kwargs)


@register_backbone
def vit_shallow(patch_size: int = 7, **kwargs):
    """Wide, one-block ViT (D=256, 1 block, 8 heads of 32, MLP ratio 1) of the embedded Fashion-MNIST job.

    At equal CPU time on 28 px images (patch 7: 4x4 tokens) width buys better k-NN features than depth:
    one-epoch DINO probes rank it 2.9 points above vit_pico (96 x 4 blocks) at a cheaper step; five epochs
    give 85.28 / 85.08 / 84.29 at seeds 0 / 1 / 2 against 85.16 for raw pixels (BENCHMARKS.md, 2026-12-06,
    eighth session); six, the job's schedule since the tenth session, 85.26 / 85.30 / 84.69 / 85.37 at
    seeds 0-3."""
    kwargs.setdefault("mlp_ratio", 1)
    return _vit(256, 1, 8, patch_size, **kwargs)
