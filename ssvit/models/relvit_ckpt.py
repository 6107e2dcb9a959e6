"""Loading RelViT's PyTorch-Lightning ``.ckpt`` files without Lightning and without running arbitrary
pickles.

Lightning 1.3 pickles the ``ModelCheckpoint`` *class* as a key of ``callbacks`` (and may pickle
other Lightning objects); ``torch.load(weights_only=True)`` refuses those globals and unpickling them
normally needs Lightning installed. ``load_lightning_checkpoint`` keeps the weights-only unpickler
and, for globals of the Lightning packages only, registers inert placeholder classes under their
names (retrying until the file loads). Any other non-allow-listed global still fails: nothing
outside torch's allow-list, NumPy scalars, ``argparse.Namespace`` and these placeholders is ever
constructed or called.

``load_relvit_weights(model, path)``: the original's rules -- a Lightning checkpoint's ``state_dict``
is loaded non-strictly with tensors of another shape replaced by the model's own (its
``on_load_checkpoint``), a plain file (ssvit's ``student`` or a single-key backbone dict, the
original's ``load_model``) into the backbone. Upstream checkpoints carry an **untrained**
``pos_embed`` (the published upstream runs use no positional embedding): loading one into a model that
adds positional embeddings keeps that untrained tensor -- the original's behaviour -- and ssvit says
so in a warning instead of silently.
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.nn as nn

from ..utils.checkpoint import CheckpointError, _safe_globals, strip_prefixes

LIGHTNING_PACKAGES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "lightning_utilities.")
_UNSUPPORTED = re.compile(r"(?:GLOBAL|global) ([\w.]+)")


def _placeholder(name: str):
    module, _, qual = name.rpartition(".")

    class LightningPlaceholder:
        """Stands in for a Lightning object of the checkpoint (never executed)."""

        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            self.state = state

    LightningPlaceholder.__name__ = LightningPlaceholder.__qualname__ = qual
    LightningPlaceholder.__module__ = module
    return LightningPlaceholder


def load_lightning_checkpoint(path: str, map_location="cpu", max_tries: int = 32) -> dict:
    """The dict of a Lightning ``.ckpt`` (or any weights-only loadable file), see the module doc."""
    extra: list = []
    last = None
    for _ in range(max_tries):
        try:
            with torch.serialization.safe_globals(_safe_globals() + extra):
                return torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError as e:
            raise CheckpointError(f"checkpoint '{path}' does not exist") from e
        except Exception as e:  # noqa: BLE001  (the unpickler's error names the refused global)
            last = e
            m = _UNSUPPORTED.search(str(e))
            if not m or not m.group(1).startswith(LIGHTNING_PACKAGES):
                break
            name = m.group(1)
            if any(n == name for _, n in extra):
                break
            extra.append((_placeholder(name), name))
    msg = str(last).splitlines()[0] if last is not None else "unknown error"
    raise CheckpointError(f"cannot load checkpoint '{path}' safely: {msg}")


def load_relvit_weights(model: nn.Module, path: str) -> None:
    ck = load_lightning_checkpoint(path)
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
