"""The method registry: ``--method NAME`` -> its ``TrainingTask`` class.

Built-in methods are entries of one table (``METHODS``: name -> ``module:Class``), imported on first
use, so reading the registry imports nothing else; a task defined elsewhere (a plug-in, a test)
registers itself with ``@register_method(name)``.
"""
from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "dino": "ssvit.methods.dino:DINO",
    "ibot": "ssvit.methods.ibot:iBOT",
    "ibot_sere": "ssvit.methods.sere:iBOTSERE",
    "dino_sere": "ssvit.methods.sere:DINOSERE",
    "esvit": "ssvit.methods.esvit:EsViT",
    "sit": "ssvit.methods.sit:SiT",
    "sit_v2": "ssvit.methods.sit_v2:SiTv2",
    "relvit": "ssvit.methods.relvit:RelViTMethod",
    "finetune": "ssvit.methods.finetune:Finetune",
}
_REGISTERED: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make a ``TrainingTask`` subclass available as ``--method name``."""
    def deco(cls):
        if name in METHODS:
            raise ValueError(f"method '{name}' is built in ({METHODS[name]})")
        _REGISTERED[name] = cls
        cls.name = name
        return cls
    return deco


def get_method(name: str) -> type:
    """The task class of ``--method name`` (a ``ValueError`` naming the known ones otherwise)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; known: {', '.join(list_methods())}")
    module, cls_name = METHODS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if cls.name != name:  # the class's own name is what its checkpoints and logs record
        raise RuntimeError(f"registry entry '{name}' points at {METHODS[name]}, whose name is '{cls.name}'")
    return cls


def list_methods() -> list[str]:
    return sorted(set(METHODS) | set(_REGISTERED))
