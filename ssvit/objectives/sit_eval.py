"""SiT-v1's "SSL losses as metrics" (``engine.evaluate_SSL`` at 1aacd6a, done as it was meant: the
original's ``--eval`` call is broken): a checkpoint's pretext losses on held-out images, without
training.

Each validation image gives two views (the evaluation transform, each rotated by ``RandomRotation``),
corrupted by ``distortImages``; the model (``eval()``) predicts rotations, contrastive embeddings and
reconstructions. Metrics: ``loss`` = rotation cross entropy and ``acc1`` = rotation top-1 (%), as the
original (its ``acc5`` is a top-4, always 100 %, kept under that name), plus the contrastive NT-Xent,
the L1 reconstruction and the uncertainty-weighted total. Rotations and corruption come from a fixed
seed, so two runs on the same checkpoint agree exactly. The first batch's clean / corrupted /
reconstructed views (both views, at most 15 per row) are saved as a PNG grid.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from ..objectives.sit import MTL_loss, distortImages


@torch.no_grad()
def evaluate_sit_losses(model: torch.nn.Module, loader, device, seed: int = 0,
                        picture_path: Optional[str] = None) -> dict:
    """Batch-size weighted means of the SiT-v1 pretext metrics over ``loader`` (yielding
    ``((x1, rot1, x2, rot2), target)``); ``model`` is a ``VisionTransformer_SiT`` in SSL mode."""
    was = model.training
    model.eval()
    sums = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0, "contrastive_loss": 0.0, "reconstruction_loss": 0.0,
            "total_loss": 0.0}
    n = 0
    for i, (views, *_) in enumerate(loader):
        x1, r1, x2, r2 = (v.to(device, non_blocking=True) for v in views)
        s = (seed * 1_000_003 + i) % (2 ** 32)
        rng, gen = np.random.RandomState(s), torch.Generator(device=x1.device).manual_seed(s)
        a1, a2 = distortImages(x1, rng=rng, generator=gen), distortImages(x2, rng=rng, generator=gen)
        rot1, con1, rec1, rw, cw, recw = model(a1)
        rot2, con2, rec2, _, _, _ = model(a2)
        rot_p, rots = torch.cat([rot1, rot2]), torch.cat([r1, r2])
        b = x1.shape[0]
        total, (l_rot, l_con, l_rec) = MTL_loss(None, b).to(device)(
            rot_p, rots, con1, con2, torch.cat([rec1, rec2]), torch.cat([x1, x2]), rw, cw, recw)
        top = rot_p.topk(4, dim=1).indices
        acc1 = (top[:, 0] == rots).float().mean().item() * 100
        acc4 = (top == rots[:, None]).any(1).float().mean().item() * 100
        for k, v in (("loss", l_rot), ("acc1", acc1), ("acc5", acc4), ("contrastive_loss", l_con),
                     ("reconstruction_loss", l_rec), ("total_loss", total)):
            sums[k] += float(v) * 2 * b
        n += 2 * b
        if i == 0 and picture_path:
            save_reconstruction_grid(picture_path, x1, a1, rec1, x2, a2, rec2)
    model.train(was)
    if n == 0:
        raise ValueError("the validation loader yielded no batch")
    return {k: v / n for k, v in sums.items()}


def save_reconstruction_grid(path: str, *rows: torch.Tensor) -> None:
    """Rows of at most 15 images (clean, corrupted, reconstructed; view 1 then view 2) as one PNG,
    values mapped from [-1, 1] (the original's ``normalize=True, range=(-1, 1)``)."""
    from torchvision.utils import save_image
    k = min(15, rows[0].shape[0])
    grid = torch.cat([r[:k].float().cpu() for r in rows])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    save_image(grid, tmp, nrow=k, normalize=True, value_range=(-1, 1))
    os.replace(tmp, path)
