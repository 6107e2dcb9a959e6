"""torchvision's ResNets as ssvit backbones (DINO ``main_dino.py --arch resnet50``; EsViT's ResNet-50 runs).

DINO takes ``torchvision_models[arch]()`` as it is, and ``MultiCropWrapper`` replaces ``fc`` by an identity:
the backbone's output is the global-average-pooled last stage, (B, 2048) for ResNet-50, and its state dict
is torchvision's without ``fc.*`` -- the layout of DINO's ``dino_resnet50_pretrain.pth`` and of the
``module.backbone.*`` entries of its full checkpoints. A torchvision classification checkpoint loads too:
its ``fc.*`` classifier is dropped (``checkpoint_filter``), as DINO's evaluation (``fc = Identity``,
``strict=False``) drops it. ``drop_path_rate``, ``patch_size`` and ``img_size`` do not apply (ignored, as
DINO ignores them for convnets).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet as tv

from .backbone import Backbone, Features
from .registry import register_backbone


class ResNet(tv.ResNet, Backbone):
    """``torchvision.models.ResNet`` with ``fc = Identity``: ``forward(x)`` -> (B, C) pooled features;
    ``forward_features(x)`` -> ``Features(pooled, last-stage map as (B, H*W, C) tokens)``."""

    has_last_blocks = False

    def __init__(self, block, layers, **kwargs):
        super().__init__(block, layers, **kwargs)
        self.embed_dim = self.num_features = self.fc.in_features
        self.fc = nn.Identity()

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> Features:
        m = self.forward_map(x)
        return Features(torch.flatten(self.avgpool(m), 1), m.flatten(2).transpose(1, 2))

    def checkpoint_filter(self, sd: dict) -> dict:
        return {k: v for k, v in sd.items() if not k.startswith("fc.")}


# torchvision's depths; the uniform kwargs (patch_size, img_size, drop_path_rate) do not apply to convnets
@register_backbone
def resnet18(**kwargs) -> ResNet:
    return ResNet(tv.BasicBlock, [2, 2, 2, 2])


@register_backbone
def resnet34(**kwargs) -> ResNet:
    return ResNet(tv.BasicBlock, [3, 4, 6, 3])


@register_backbone
def resnet50(**kwargs) -> ResNet:
    return ResNet(tv.Bottleneck, [3, 4, 6, 3])


@register_backbone
def resnet101(**kwargs) -> ResNet:
    return ResNet(tv.Bottleneck, [3, 4, 23, 3])
