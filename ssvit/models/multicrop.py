"""``MultiCropWrapper`` (facebookresearch/dino ``utils.py``): one backbone call per crop resolution."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn


class MultiCropWrapper(nn.Module):
    """Run ``backbone`` once per group of consecutive same-size crops, then ``head`` once.

    Input: a tensor (B, C, H, W) or a list of crops ``[(B, C, H_i, W_i), ...]`` (crop-major).
    Output: ``head(cat(backbone(group) for group))`` of shape (ncrops*B, K). ``masks`` (a list
    parallel to the crops) is forwarded to the backbone group-wise (iBOT). Keys: ``backbone.*``,
    ``head.*`` as the original.
    """

    def __init__(self, backbone: nn.Module, head: Optional[nn.Module] = None):
        super().__init__()
        backbone.fc, backbone.head = nn.Identity(), nn.Identity()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()

    @staticmethod
    def group_boundaries(crops: Sequence[torch.Tensor]) -> list[int]:
        """End indices of runs of consecutive crops with equal last-dimension size."""
        sizes = torch.tensor([c.shape[-1] for c in crops])
        counts = torch.unique_consecutive(sizes, return_counts=True)[1]
        return torch.cumsum(counts, 0).tolist()

    def forward_backbone(self, x, masks=None, **kwargs) -> torch.Tensor:
        if not isinstance(x, (list, tuple)):
            x = [x]
            masks = [masks] if masks is not None else None
        outputs, start = [], 0
        for end in self.group_boundaries(x):
            inp = torch.cat(x[start:end])
            if masks is not None:
                kwargs["mask"] = torch.cat(masks[start:end])
            out = self.backbone(inp, **kwargs)
            if isinstance(out, tuple):
                out = out[0]
            outputs.append(out)
            start = end
        return torch.cat(outputs)

    def forward(self, x, masks=None, return_backbone_feat: bool = False, **kwargs):
        feats = self.forward_backbone(x, masks, **kwargs)
        out = self.head(feats)
        return (feats, out) if return_backbone_feat else out
