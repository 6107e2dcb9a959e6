"""The interface every backbone offers (ViT, Swin, CvT, ViL, SiT-v1's ViT, RelViT's ViT and Swin), so
that evaluation and methods call methods instead of probing with ``hasattr``.

* ``forward_features(x) -> Features``: ``cls`` (B, D), the image embedding -- the CLS token of a ViT,
  the pooled last stage of a multi-stage backbone (EsViT's view feature) -- and ``patch_tokens``
  (B, N, D), the final-normed last-stage tokens (the region features of EsViT's dense loss).
* ``forward_intermediates(x, n) -> list``: the last ``n`` blocks' final-normed outputs, oldest first
  (token models: (B, 1+N, D) each, DINO's ``get_intermediate_layers``).
* ``forward_last_blocks(x, n, avgpool)``: EsViT's linear-probe feature over the last ``n`` blocks (its
  original name ``forward_return_n_last_blocks`` stays as an alias).
* ``get_last_selfattention(x)``: the last block's post-softmax attention.

Two class attributes say what a backbone is: ``is_token_model`` (a CLS token and one flat list of
blocks: DINO's / iBOT's probes read blocks and tokens directly) and ``has_last_blocks`` (EsViT's
n-last-blocks feature exists).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn


class Features(NamedTuple):
    cls: torch.Tensor           # (B, D)
    patch_tokens: torch.Tensor  # (B, N, D)


class Backbone(nn.Module):
    is_token_model: bool = False
    has_last_blocks: bool = True

    def forward_features(self, x: torch.Tensor) -> Features:
        raise NotImplementedError(f"{type(self).__name__} must define forward_features")

    def forward_intermediates(self, x: torch.Tensor, n: int = 1, norm: bool = True) -> list[torch.Tensor]:
        raise ValueError(f"{type(self).__name__} is not a token model: no per-block token outputs "
                         "(forward_last_blocks gives EsViT's per-block feature)")

    def forward_last_blocks(self, x: torch.Tensor, n: int = 1, avgpool: bool = False) -> torch.Tensor:
        if not self.has_last_blocks:
            raise ValueError(f"{type(self).__name__} has no n-last-blocks feature")
        return self.forward_return_n_last_blocks(x, n, avgpool)

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{type(self).__name__} exposes no attention maps")

    def get_all_selfattention(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise ValueError(f"{type(self).__name__} exposes no attention maps")

    def forward_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EsViT's name: ``tuple(forward_features(x))``."""
        return tuple(self.forward_features(x))


def is_token_model(model: nn.Module) -> bool:
    """A ViT-like backbone (CLS + flat blocks); False for anything that is not a ``Backbone``."""
    return isinstance(model, Backbone) and model.is_token_model


def has_last_blocks(model: nn.Module) -> bool:
    """EsViT's n-last-blocks feature is defined for ``model``."""
    return isinstance(model, Backbone) and model.has_last_blocks
