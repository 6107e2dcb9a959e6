"""EsViT's multi-crop model: backbone + view head ``head`` + region head ``head_dense``.

EsViT (Li et al., ICLR 2022; microsoft/esvit) attaches both heads to the backbone module itself, so
its checkpoints hold the backbone's own keys next to ``head.*`` and ``head_dense.*`` -- no
``backbone.`` prefix. ``EsViTWrapper`` keeps ssvit's structure (a ``backbone`` child, as
``MultiCropWrapper``) but reads and writes EsViT's flat layout in ``state_dict`` /
``load_state_dict``; parameter order (backbone, head, head_dense) equals EsViT's, so optimizer
states line up too.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from .multicrop import MultiCropWrapper

_HEADS = ("head.", "head_dense.")


def _flatten_backbone_keys(module, state_dict, prefix, local_metadata) -> None:
    inner = prefix + "backbone."
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        state_dict[prefix + k[len(inner):] if k.startswith(inner) else k] = v


def _nest_backbone_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    for k in [k for k in state_dict if k.startswith(prefix)]:
        rest = k[len(prefix):]
        if not rest.startswith(_HEADS) and not rest.startswith("backbone."):
            state_dict[prefix + "backbone." + rest] = state_dict.pop(k)


class DenseOutput(NamedTuple):
    """EsViT's dense output (rows crop-major, then image, then token)."""
    head: torch.Tensor        # head(pooled) (ncrops*B, K)
    head_dense: torch.Tensor  # head_dense(tokens) (sum B*N_g, K)
    tokens: torch.Tensor      # region tokens (sum B*N_g, C)
    npatch: list              # N_g per resolution group


class EsViTWrapper(MultiCropWrapper):
    """Run the backbone once per resolution group; return EsViT's outputs.

    Input: a tensor (B, 3, H, W) or a list of crops (crop-major, globals first). The backbone must
    provide ``forward(x) -> (B, C)`` and, for dense prediction, ``forward_features(x) -> Features(cls (B, C),
    patch_tokens (B, N, C))`` (pooled view feature, final-normed region tokens).

    Output without dense prediction: ``head(cat(pooled))`` (ncrops*B, K). With it, EsViT's 4 outputs as a ``DenseOutput``
    ``(head(pooled) (ncrops*B, K), head_dense(tokens) (sum B*N_g, K), tokens (sum B*N_g, C),
    npatch [N_g per resolution group])``, rows crop-major, then image, then token.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, head_dense: Optional[nn.Module] = None,
                 use_dense_prediction: bool = False):
        super().__init__(backbone, head)
        if use_dense_prediction and head_dense is None:
            raise ValueError("dense prediction needs a head_dense")
        self.head_dense = head_dense if use_dense_prediction else None
        self.use_dense_prediction = use_dense_prediction
        self.register_state_dict_post_hook(_flatten_backbone_keys)
        self.register_load_state_dict_pre_hook(_nest_backbone_keys)

    def forward(self, x, return_backbone_feat: bool = False, **kwargs):
        if not self.use_dense_prediction:
            return super().forward(x, return_backbone_feat=return_backbone_feat)
        if not isinstance(x, (list, tuple)):
            x = [x]
        pooled, tokens, npatch, start = [], [], [], 0
        for end in self.group_boundaries(x):
            cls, fea = self.backbone.forward_features(torch.cat(x[start:end]))
            b, n, c = fea.shape
            pooled.append(cls)
            tokens.append(fea.reshape(b * n, c))
            npatch.append(n)
            start = end
        pooled, tokens = torch.cat(pooled), torch.cat(tokens)
        return DenseOutput(self.head(pooled), self.head_dense(tokens), tokens, npatch)
