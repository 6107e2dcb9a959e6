"""Named frozen-feature choices of a ViT backbone for k-NN / probing (the same choice is applied to
every model compared, e.g. a trained and a randomly initialised ViT).

* ``cls``: the CLS token after the final norm (B, D) -- DINO's k-NN feature.
* ``cls_avgpool``: CLS and the mean patch token of the last block, both final-normed, concatenated
  (B, 2D) -- DINO's linear-probe feature for ViT-B (``--avgpool_patchtokens``).
* ``last4_cls``: the final-normed CLS tokens of the last 4 blocks, concatenated (B, 4D) -- DINO's
  linear-probe feature for ViT-S (``--n_last_blocks 4``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

FEATURES: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "cls": lambda m, x: m(x),
    "cls_avgpool": lambda m, x: m.forward_return_n_last_blocks(x, 1, return_patch_avgpool=True),
    "last4_cls": lambda m, x: m.forward_return_n_last_blocks(x, 4),
}


def backbone_features(model: nn.Module, images: torch.Tensor, kind: str = "cls") -> torch.Tensor:
    """``FEATURES[kind]`` of ``images`` (B, C, H, W) -> (B, F)."""
    if kind not in FEATURES:
        raise ValueError(f"unknown feature '{kind}' (choose from {', '.join(FEATURES)})")
    return FEATURES[kind](model, images)
