"""XCiT (El-Nouby et al. 2021) from timm as ssvit backbones, DINO's ``--arch xcit_small_12_p16`` & co.

DINO builds ``torch.hub.load('facebookresearch/xcit:main', arch, pretrained=False,
drop_path_rate=...)``; timm's ``Xcit`` is the same network (timm ported it) under timm's key names, and
timm's ``checkpoint_filter_fn`` maps the official layout (``pos_embeder.*``, class-attention ``qkv``)
onto it -- so DINO's released XCiT backbones and full checkpoints load here (``checkpoint_filter``);
ssvit's own checkpoints are in timm's layout. The sizes are DINO's four (the FB hub's configs: S12 =
384 wide, 12 blocks, 8 heads, eta 1; M24 = 512, 24, 8, eta 1e-5; tokens_norm) plus a pico size for
CPU tests. ``forward(x)`` is the final-normed class token (B, D) (timm's ``forward_head`` with no
classifier); ``forward_features(x)`` -> ``Features(cls, patch tokens)``.
"""
from __future__ import annotations

import torch
from timm.models.xcit import Xcit, checkpoint_filter_fn

from .backbone import Backbone, Features
from .registry import register_backbone


class XCiT(Xcit, Backbone):
    has_last_blocks = False

    def __init__(self, **kwargs):
        super().__init__(num_classes=0, **kwargs)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D): the class token and the patch tokens after the class-attention blocks and the norm."""
        return Xcit.forward_features(self, x)

    def forward_features(self, x: torch.Tensor) -> Features:
        t = self.forward_tokens(x)
        return Features(t[:, 0], t[:, 1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]

    def checkpoint_filter(self, sd: dict) -> dict:
        return checkpoint_filter_fn(dict(sd), self)

    # ssvit's interface, not timm's of the same name: XCiT's blocks carry no CLS token (it joins in the
    # class-attention blocks), so it is not a token model for DINO's / iBOT's per-block probes
    forward_intermediates = Backbone.forward_intermediates


def _xcit(patch, embed_dim, depth, num_heads, eta, drop_path_rate=0.0, img_size=224, **_):
    """The patch size is the name's (a ``--patch_size`` flag does not change it, as with DINO's hub models)."""
    return XCiT(patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=num_heads, eta=eta,
                tokens_norm=True, drop_path_rate=drop_path_rate or 0.0, img_size=img_size)


@register_backbone(aliases=("xcit_small_12_p16_224",))
def xcit_small_12_p16(**kwargs) -> XCiT:
    return _xcit(16, 384, 12, 8, 1.0, **kwargs)


@register_backbone(aliases=("xcit_small_12_p8_224",))
def xcit_small_12_p8(**kwargs) -> XCiT:
    return _xcit(8, 384, 12, 8, 1.0, **kwargs)


@register_backbone(aliases=("xcit_medium_24_p16_224",))
def xcit_medium_24_p16(**kwargs) -> XCiT:
    return _xcit(16, 512, 24, 8, 1e-5, **kwargs)


@register_backbone(aliases=("xcit_medium_24_p8_224",))
def xcit_medium_24_p8(**kwargs) -> XCiT:
    return _xcit(8, 512, 24, 8, 1e-5, **kwargs)


@register_backbone
def xcit_pico(**kwargs) -> XCiT:
    """2 blocks, 48 wide, 4 heads, patch 8 (CPU tests)."""
    return _xcit(8, 48, 2, 4, 1.0, **kwargs)
