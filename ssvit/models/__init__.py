"""Backbones, heads and wrappers."""
from . import cvt  # noqa: F401  (registers EsViT's CvT (cvt_v4) sizes)
from . import swin_transformer  # noqa: F401  (registers EsViT's Swin sizes)
from . import vision_longformer  # noqa: F401  (registers EsViT's ViL / MsViT)
from . import sit  # noqa: F401  (registers SiT-v1's ViT sizes)
from . import vit_factories  # noqa: F401  (registers the ViT sizes)
from . import resnet  # noqa: F401  (registers torchvision's ResNets: DINO --arch resnet50)
from . import xcit  # noqa: F401  (registers timm's XCiT: DINO --arch xcit_*)
from .heads import DINOHead, WeightNormLinear
from .multicrop import MultiCropWrapper
from .registry import create_backbone, list_backbones, register_backbone
from .vision_transformer import VisionTransformer, interpolate_pos_encoding

__all__ = ["DINOHead", "WeightNormLinear", "MultiCropWrapper", "VisionTransformer", "create_backbone",
           "list_backbones", "register_backbone", "interpolate_pos_encoding"]
