"""Checkpoint I/O: atomic writes, safe loading of the originals' pickles, resume, weight loading.

* ``save_atomic`` writes to a temp file in the same folder, fsyncs, then ``os.replace``s it: a
  crash at any moment leaves either the old file or the new one, never half a file.
* ``load_checkpoint`` uses ``torch.load(weights_only=True)`` with ``argparse.Namespace`` and the
  NumPy scalar types allow-listed, so the originals' full checkpoints (which pickle their args)
  load without executing arbitrary pickles.
* ``load_state_checked`` loads by name and shape, reporting mismatches by name.

Weight loading for evaluation (the originals' key rules) is in ``ssvit.models.loading``.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model (message lists the keys)."""


def save_atomic(obj: Any, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _safe_globals() -> list:
    allowed: list = [argparse.Namespace]
    # NumPy scalars/dtypes as pickled by NumPy 1.x (``numpy.core``) and 2.x (``numpy._core``).
    try:
        from numpy._core.multiarray import scalar as np_scalar  # NumPy >= 2
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar as np_scalar
    allowed += [np_scalar, (np_scalar, "numpy.core.multiarray.scalar"), np.dtype,
                (np.dtype, "numpy.dtype")]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "UInt8DType"):
        t = getattr(getattr(np, "dtypes", None), name, None)
        if t is not None:
            allowed.append(t)
    return allowed


#: PyTorch Lightning pickles its own objects into checkpoints (Lightning 1.3: the ``ModelCheckpoint``
#: class as a key of ``callbacks``, e.g. RelViT's ``.ckpt`` files). Their globals get inert placeholders
#: instead (never executed), so such files load without Lightning; any other refused global still fails.
LIGHTNING_PACKAGES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "lightning_utilities.")
_REFUSED_GLOBAL = re.compile(r"(?:GLOBAL|global) ([\w.]+)")


def _placeholder(name: str) -> type:
    module, _, qual = name.rpartition(".")

    class LightningPlaceholder:
        """Stands in for a Lightning object of a checkpoint."""

        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            self.state = state

    LightningPlaceholder.__name__ = LightningPlaceholder.__qualname__ = qual
    LightningPlaceholder.__module__ = module
    return LightningPlaceholder


def load_checkpoint(path: str, map_location: Any = "cpu", max_placeholders: int = 32) -> Any:
    """``torch.load`` with weights_only=True plus the allow-list above and placeholders for Lightning's
    globals. Raises ``CheckpointError`` with the path for missing, truncated or untrusted files."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    extra: list = []
    while True:
        try:
            with torch.serialization.safe_globals(_safe_globals() + extra):
                return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:
            m = _REFUSED_GLOBAL.search(str(e))
            name = m.group(1) if m else ""
            if not name.startswith(LIGHTNING_PACKAGES) or len(extra) >= max_placeholders \
                    or any(n == name for _, n in extra):
                raise CheckpointError(f"cannot load checkpoint '{path}': {_load_failure(e)}") from e
            extra.append((_placeholder(name), name))


def _load_failure(e: Exception) -> str:
    """One line for why ``torch.load`` failed (torch's own message runs over several lines and
    advises ``weights_only=False``, which would execute arbitrary pickled code)."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = detail[0].strip() if detail else ""
        return ("not a PyTorch checkpoint, or one that pickles objects other than tensors, containers and "
                f"argparse/NumPy scalars ({detail[:200]})")
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:300]}"


def strip_prefixes(state_dict: dict, prefixes: Iterable[str] = ("module.", "backbone.")) -> dict:
    """Remove each prefix wherever it occurs in a key (``str.replace``, as the originals do)."""
    out = {}
    for k, v in state_dict.items():
        for p in prefixes:
            k = k.replace(p, "")
        out[k] = v
    return out


def add_prefix(state_dict: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state_dict.items()}


def _describe(keys: list[str], limit: int = 20) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_checked(model: nn.Module, state_dict: dict, what: str = "model",
                       allow_missing: Iterable[str] = ()) -> None:
    """Load strictly by name and shape; on mismatch raise ``CheckpointError`` listing the missing,
    unexpected and shape-mismatched keys (nothing is loaded in that case)."""
    own = model.state_dict()
    allow = tuple(allow_missing)
    missing = [k for k in own if k not in state_dict and not k.startswith(allow)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"checkpoint does not fit the {what}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_describe(shapes)}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=False)


def torch_rng_state(device: Optional[torch.device] = None) -> dict:
    """This process's generators: torch's CPU one, Python's, NumPy's, and on a GPU ``device`` that
    device's (``cuda_device``; ``cuda``: every visible GPU's, the layout of older checkpoints)."""
    import random
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4]))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        if device is not None and device.type == "cuda":
            state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: Optional[torch.device] = None) -> None:
    """The inverse of ``torch_rng_state``: on a GPU ``device`` its own generator from ``cuda_device``
    (else, as before, every GPU's from ``cuda`` when the device count matches)."""
    import random
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_text_atomic(text: str, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
