"""Self-supervised methods: each plugs a model, an objective and augmentations into the engine."""
from .base import SSLMethod, get_method, list_methods, register_method
from .dino import DINO
from .esvit import EsViT
from .ibot import iBOT
from .finetune import Finetune
from .sere import DINOSERE, iBOTSERE
from .sit import SiT
from .sit_v2 import SiTv2
from .relvit import RelViTMethod

__all__ = ["SSLMethod", "get_method", "list_methods", "register_method", "DINO", "EsViT", "iBOT", "iBOTSERE", "DINOSERE", "Finetune", "SiT", "SiTv2", "RelViTMethod"]
