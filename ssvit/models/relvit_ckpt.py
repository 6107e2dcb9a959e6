"""Loading RelViT weights: the original's PyTorch-Lightning ``.ckpt`` files (read without Lightning
and without running arbitrary pickles by ``ssvit.utils.checkpoint.load_checkpoint``, whose
weights-only unpickler gives Lightning's globals inert placeholders), the original's single-key
backbone files and ssvit's own checkpoints.

``load_relvit_weights(model, path)``: the original's rules -- a Lightning checkpoint's ``state_dict``
is loaded non-strictly with tensors of another shape replaced by the model's own (its
``on_load_checkpoint``), a plain file (ssvit's ``student`` or a single-key backbone dict, the
original's ``load_model``) into the backbone. Upstream checkpoints carry an **untrained**
``pos_embed`` (the published upstream runs use no positional embedding): loading one into a model that
adds positional embeddings keeps that untrained tensor -- the original's behaviour -- and ssvit says
so in a warning instead of silently.
"""
from __future__ import annotations

import warnings

import torch.nn as nn

from ..utils.checkpoint import CheckpointError, load_checkpoint, strip_prefixes


def load_relvit_weights(model: nn.Module, path: str) -> None:
    ck = load_checkpoint(path)
    own = model.state_dict()
    if isinstance(ck, dict) and isinstance(ck.get("state_dict"), dict):  # Lightning: the whole RelViT
        sd = dict(ck["state_dict"])
        kept = {}
        for k, v in sd.items():
            if k in own and v.shape != own[k].shape:
                print(f"Skip loading parameter: {k}, required shape: {tuple(own[k].shape)}, loaded shape: {tuple(v.shape)}")
                v = own[k]
            if k in own:
                kept[k] = v
        missing = [k for k in own if k not in kept]
        model.load_state_dict(kept, strict=False)
        if missing:
            print(f"Not in the checkpoint (kept as initialised): {', '.join(missing[:10])}")
    else:
        if isinstance(ck, dict) and isinstance(ck.get("student"), dict):  # an ssvit --method relvit checkpoint
            sd = strip_prefixes(ck["student"], ("module.",))
            model.load_state_dict(sd, strict=False)
            kept = sd
        elif isinstance(ck, dict) and len(ck) == 1 and isinstance(next(iter(ck.values())), dict):
            kept = strip_prefixes(next(iter(ck.values())), ("module.",))  # the original's load_model: a backbone
            bb = model.backbone.state_dict()
            kept = {k: (bb[k] if k in bb and v.shape != bb[k].shape else v) for k, v in kept.items() if k in bb}
            model.backbone.load_state_dict(kept, strict=False)
            kept = {f"backbone.{k}": v for k, v in kept.items()}
        else:
            raise CheckpointError(f"'{path}': neither a Lightning checkpoint ('state_dict'), an ssvit one "
                                  "('student') nor a single-key backbone file")
    bb = getattr(model, "backbone", None)
    if bb is not None and getattr(bb, "use_positional_embeddings", False) and "backbone.pos_embed" in kept:
        warnings.warn(f"'{path}': its pos_embed is loaded as it is; an upstream RelViT checkpoint trained without "
                      "positional embeddings carries an untrained one (the original finetunes from it too)")
    print(f"Loaded model at '{path}'")
