"""Backbone weights from any supported file, for evaluation and initialisation.

``load_pretrained_weights`` follows the originals' key rules (take ``checkpoint_key`` when present,
strip ``module.`` and ``backbone.``, drop head keys), interpolates position embeddings of another
grid (DINO's rule) and reports mismatches by name.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn as nn

from ..utils.checkpoint import CheckpointError, load_checkpoint, load_state_checked, strip_prefixes


# projection heads and SERE's relation heads are training-only: dropped for evaluation
HEAD_PREFIXES = ("head.", "head_dense.", "head_recons.", "fc.", "last_layer", "channel_sere", "pixel_sere",
                 "rel_head.", "abs_pos_head.", "dist_head.", "angle_head.", "clf_head.")  # the last five: RelViT


def extract_backbone_state(ckpt: Any, checkpoint_key: Optional[str] = "teacher") -> dict:
    """Pick the state dict out of any supported file and normalise its keys to the backbone's.

    Accepts: full training checkpoints (``ckpt[checkpoint_key]``, also one level deeper under
    ``'model'`` / ``'state_dict'`` as EsViT's non-SSL files), iBOT backbone files
    (``{'state_dict': ...}``), ``{'model': ...}`` / ``{'net': ...}`` files and bare state dicts.
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"expected a dict-like checkpoint, got {type(ckpt).__name__}")
    sd = ckpt
    if checkpoint_key == "teacher" and "teacher" not in ckpt and isinstance(ckpt.get("student"), dict):
        # a task trained without an EMA teacher (SiT-v1, RelViT, finetuning): its only network
        print("The checkpoint has no 'teacher' (its method trains without one): using 'student'")
        checkpoint_key = "student"
    if checkpoint_key and checkpoint_key in ckpt and isinstance(ckpt[checkpoint_key], dict):
        sd = ckpt[checkpoint_key]
    else:
        for k in ("state_dict", "model", "net"):  # auto-detect wrapped backbone files
            if k in ckpt and isinstance(ckpt[k], dict):
                sd = ckpt[k]
                break
    for k in ("model", "state_dict"):  # e.g. EsViT's supervised files: ckpt[key]['model']
        if not all(isinstance(v, torch.Tensor) for v in sd.values()) and isinstance(sd.get(k), dict):
            sd = sd[k]
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = ", ".join(list(ckpt.keys())[:10])
        raise CheckpointError(f"no state dict found under key '{checkpoint_key}'; top-level keys: {keys}")
    sd = strip_prefixes(sd)
    sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    if ckpt.get("relvit_positional_embeddings") is False and "pos_embed" in sd:
        # RelViT upstream runs never add their pos_embed: it is untrained. Evaluating the backbone
        # as a ViT that adds it would perturb every token; zero is what the training saw.
        print("RelViT checkpoint trained without positional embeddings: its untrained pos_embed is zeroed")
        sd["pos_embed"] = torch.zeros_like(sd["pos_embed"])
    return sd


def read_pretrained_state(path: str, checkpoint_key: Optional[str] = "teacher") -> dict:
    """Backbone state dict of a pretrained-weights file (``extract_backbone_state`` rules).

    An empty path is an error (the originals would download reference weights; ssvit never
    downloads)."""
    if not path:
        raise CheckpointError("--pretrained_weights is required: ssvit does not download weights "
                              "(give a local DINO/iBOT/EsViT/ssvit checkpoint file)")
    return pretrained_state_of(load_checkpoint(path), checkpoint_key, path)


def pretrained_state_of(ckpt: Any, checkpoint_key: Optional[str], path: str) -> dict:
    """``read_pretrained_state`` of a checkpoint already read from ``path`` (for callers that also need
    its other entries, e.g. the run's ``args``)."""
    if isinstance(ckpt, dict) and "pytorch-lightning_version" in ckpt:  # e.g. RelViT's .ckpt files
        warnings.warn(f"'{path}' is a Lightning checkpoint: if it was trained without positional embeddings (the "
                      "published RelViT upstream scripts), its pos_embed is untrained")
    return extract_backbone_state(ckpt, checkpoint_key)


def load_backbone_state(model: nn.Module, sd: dict, arch: str = "") -> None:
    """Load a backbone state dict strictly; position embeddings of another grid size are
    interpolated (DINO's rule) and an iBOT ``masked_embed`` the model lacks is dropped."""
    if hasattr(model, "checkpoint_filter"):  # timm-style: the model adapts foreign layouts (e.g. SiT's 2 tokens)
        sd = model.checkpoint_filter(sd)
    own = model.state_dict()
    if not hasattr(model, "checkpoint_filter") and "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape \
            and sd["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]:
        from .vision_transformer import interpolate_pos_encoding
        n = own["pos_embed"].shape[1] - 1
        side = int(math.sqrt(n))
        sd = dict(sd, pos_embed=interpolate_pos_encoding(sd["pos_embed"], side, side))
        warnings.warn(f"interpolated pos_embed from the checkpoint to {side}x{side} patches")
    sd = {k: v for k, v in sd.items() if k != "masked_embed" or "masked_embed" in own}
    load_state_checked(model, sd, what=f"architecture '{arch}'" if arch else "model")


def load_pretrained_weights(model: nn.Module, path: str, checkpoint_key: Optional[str] = "teacher",
                            arch: str = "") -> None:
    """Load backbone weights for evaluation (DINO / iBOT / ssvit checkpoints or release files)."""
    load_backbone_state(model, read_pretrained_state(path, checkpoint_key), arch)
    print(f"Pretrained weights found at {path} and loaded with key '{checkpoint_key}'")
