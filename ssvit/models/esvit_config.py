"""EsViT's YAML model configs (``--cfg FILE`` plus trailing ``KEY VALUE`` overrides).

EsViT builds Swin / CvT / ViL from a yacs config: ``MODEL.SPEC`` holds the architecture,
``TRAIN.IMAGE_SIZE`` the nominal resolution, ``BASE: [files]`` inherits (paths relative to the
file), and command-line ``KEY VALUE`` pairs (e.g. ``MODEL.SPEC.MSVIT.ARCH 'l1,h3,...'``) override
entries. Here the config is a plain nested dict; each backbone module maps ``MODEL.SPEC`` to its
constructor kwargs with its own ``spec_to_kwargs``.
"""
from __future__ import annotations

import ast
import importlib
import os
from typing import Any, Sequence

import yaml

#: arch-name prefix -> module with the backbone family's ``spec_to_kwargs``
FAMILIES = {"swin": "ssvit.models.swin_transformer", "cvt": "ssvit.models.cvt", "vil": "ssvit.models.vision_longformer"}


def is_multistage(arch: str) -> bool:
    return any(arch.startswith(p) for p in FAMILIES)


def _merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def _parse_value(text: Any) -> Any:
    """yacs' rule: a Python literal when it parses as one, else the string itself."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_esvit_config(path: str, opts: Sequence[str] = (), _seen: tuple = ()) -> dict:
    """Nested dict of ``path`` with its ``BASE`` files merged first and ``opts`` applied last.

    Raises ``ValueError`` for a missing file, a non-mapping YAML, an inheritance cycle, or
    overrides that are not KEY VALUE pairs.
    """
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"--cfg file '{path}' does not exist")
    if path in _seen:
        raise ValueError(f"--cfg: BASE inheritance cycle through '{path}'")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--cfg file '{path}' must hold a mapping")
    cfg: dict = {}
    for base in data.get("BASE", []) or []:
        if base:
            _merge(cfg, load_esvit_config(os.path.join(os.path.dirname(path), base), (), _seen + (path,)))
    _merge(cfg, {k: v for k, v in data.items() if k != "BASE"})
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config override '{key}': '{part}' is not a section")
        node[parts[-1]] = _parse_value(value)
    return cfg


def backbone_kwargs_from_cfg(arch: str, cfg: dict) -> dict:
    """Constructor kwargs of ``arch``'s family from an EsViT config: ``MODEL.SPEC`` through the
    family's ``spec_to_kwargs``, ``img_size`` from ``TRAIN.IMAGE_SIZE[0]`` (default 224)."""
    family = next((mod for prefix, mod in FAMILIES.items() if arch.startswith(prefix)), None)
    if family is None:
        raise ValueError(f"--cfg applies to Swin / CvT / ViL archs, not '{arch}'")
    spec = (cfg.get("MODEL") or {}).get("SPEC") or {}
    kwargs = dict(importlib.import_module(family).spec_to_kwargs(spec))
    if "patch_size" in kwargs:  # the factories ignore the CLI's (ViT) --patch_size; a config's is honoured
        kwargs["cfg_patch_size"] = kwargs.pop("patch_size")
    size = (cfg.get("TRAIN") or {}).get("IMAGE_SIZE")
    if size:
        kwargs["img_size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
    return kwargs
