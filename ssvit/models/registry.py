"""One registry for every backbone: ``create_backbone(name, **kwargs)``.

Factories take uniform kwargs (``patch_size``, ``img_size``, ``drop_path_rate``, ...) and ignore
ones that do not apply, like timm's ``create_model``. Aliases keep the original repos' names
(``deit_small`` is EsViT's/DINO's name for ``vit_small``).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(fn: Callable[..., nn.Module] = None, *, aliases: tuple[str, ...] = ()):
    def deco(f):
        _BACKBONES[f.__name__] = f
        for a in aliases:
            _ALIASES[a] = f.__name__
        return f
    return deco(fn) if fn is not None else deco


def list_backbones() -> list[str]:
    return sorted(_BACKBONES) + sorted(_ALIASES)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name; unknown names raise ``ValueError`` listing the known ones."""
    key = _ALIASES.get(name, name)
    if key not in _BACKBONES:
        raise ValueError(f"unknown architecture '{name}'; known: {', '.join(list_backbones())}")
    return _BACKBONES[key](**kwargs)
