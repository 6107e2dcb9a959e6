"""Backbones, heads and wrappers."""
from . import vit_factories  # noqa: F401  (registers the ViT sizes)
from .heads import DINOHead, WeightNormLinear
from .multicrop import MultiCropWrapper
from .registry import create_backbone, list_backbones, register_backbone
from .vision_transformer import VisionTransformer, interpolate_pos_encoding

__all__ = ["DINOHead", "WeightNormLinear", "MultiCropWrapper", "VisionTransformer", "create_backbone",
           "list_backbones", "register_backbone", "interpolate_pos_encoding"]
