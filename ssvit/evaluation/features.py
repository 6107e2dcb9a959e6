"""Named frozen-feature choices of a ViT backbone for k-NN / probing (the same choice is applied to
every model compared, e.g. a trained and a randomly initialised ViT).

* ``cls``: the CLS token after the final norm (B, D) -- DINO's k-NN feature. Asked for alone it is
  the backbone's own output ``model(x)``, so any backbone (Swin: its pooled tokens) works.
* ``cls_avgpool``: CLS and the mean patch token of the last block, both final-normed, concatenated
  (B, 2D) -- DINO's linear-probe feature for ViT-B (``--avgpool_patchtokens``).
* ``last4_cls``: the final-normed CLS tokens of the last 4 blocks, concatenated (B, 4D) -- DINO's
  linear-probe feature for ViT-S (``--n_last_blocks 4``).

Several choices at once share one forward pass (``forward_intermediates``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from .linear import num_blocks

# name -> (how many last blocks it reads, feature of those blocks' normed tokens and the prefix-token count)
FEATURES: dict[str, tuple[int, Callable[[list[torch.Tensor], int], torch.Tensor]]] = {
    "cls": (1, lambda blocks, p: blocks[-1][:, 0]),
    "cls_avgpool": (1, lambda blocks, p: torch.cat([blocks[-1][:, 0], blocks[-1][:, p:].mean(dim=1)], dim=-1)),
    "last4_cls": (4, lambda blocks, p: torch.cat([b[:, 0] for b in blocks[-4:]], dim=-1)),
}


def check_features(model: nn.Module, kinds: Sequence[str]) -> None:
    """``ValueError`` (one line) for an unknown feature, or one that reads more blocks than ``model`` has
    (``last4_cls`` of a one-block ViT would silently be its ``cls``)."""
    unknown = [k for k in kinds if k not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature '{unknown[0]}' (choose from {', '.join(FEATURES)})")
    depth = num_blocks(model)
    for k in kinds:
        if depth is not None and FEATURES[k][0] > depth:
            raise ValueError(f"feature '{k}' reads the last {FEATURES[k][0]} blocks; the model has {depth}")


def backbone_features(model: nn.Module, images: torch.Tensor, kinds: Sequence[str] = ("cls",)) -> dict[str, torch.Tensor]:
    """``{kind: (B, F)}`` for each of ``kinds`` of ``images`` (B, C, H, W), from one forward pass."""
    check_features(model, kinds)
    if list(kinds) == ["cls"]:
        return {"cls": model(images)}
    blocks = model.forward_intermediates(images, max(FEATURES[k][0] for k in kinds))
    return {k: FEATURES[k][1](blocks, model.num_prefix_tokens) for k in kinds}
