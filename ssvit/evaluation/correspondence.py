"""EsViT's region correspondence analysis (microsoft/esvit ``analyze_models.py``).

Every region token of view 1 is matched to its most cosine-similar region token of view 2 (the same
matching DDINO trains with). ``flip_correspondence`` scores the matches on an image and its
horizontal mirror, where the true partner of a cell is known: the mirrored cell.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def cell_centres(num_tokens: int, height: int) -> tuple[torch.Tensor, float]:
    """Pixel centres (2, N) -- row 0 = y, row 1 = x -- of a square grid of ``num_tokens`` cells over
    a ``height``-px image, row-major, and the cell size (EsViT: 32 px for Swin at 224 px). QUIRK
    (kept): the grid side comes from the height for both axes (square inputs)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} region tokens do not form a square grid")
    cell = height / side
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()]).float() * cell + cell / 2.0, cell


def match_tokens(fea1: torch.Tensor, fea2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best match in view 2 for every token of view 1: (similarity (N1,), index (N1,)).
    ``fea1`` (N1, C), ``fea2`` (N2, C); cosine similarity, hard argmax."""
    sim = F.normalize(fea1, p=2, dim=1) @ F.normalize(fea2, p=2, dim=1).t()
    return sim.max(dim=1)


def top_matches(sim: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Indices of the ``k`` most similar matches, best first (ties in token order, as EsViT's
    stable sort of a dict)."""
    order = torch.sort(sim, descending=True, stable=True)[1]
    return order[:k]


def flip_correspondence(fea1: torch.Tensor, fea2: torch.Tensor, width: int, height: Optional[int] = None,
                        k: int = 10) -> dict:
    """Scores of the ``k`` best matches between an image (``fea1``) and its horizontal mirror (``fea2``).

    ``accuracy``: fraction of matches landing exactly on the mirrored cell; ``distance_error``:
    mean pixel distance between the matched cell centre and the mirrored one; ``sim_value``: the
    k-th best similarity (EsViT's ``measure_correspondence`` figures).
    """
    coords, _ = cell_centres(fea1.shape[0], height or width)
    sim, idx = match_tokens(fea1, fea2)
    best = top_matches(sim, k)
    x1, y1 = coords[1, best], coords[0, best]
    x2, y2 = coords[1, idx[best]], coords[0, idx[best]]
    distance = (((width - x1) - x2) ** 2 + (y1 - y2) ** 2).sqrt()
    return {"accuracy": float((distance == 0).float().mean()), "distance_error": float(distance.mean()),
            "sim_value": float(sim[best[-1]])}


def draw_correspondence(img1, img2, fea1: torch.Tensor, fea2: torch.Tensor, path: str, k: int = 10,
                        margin: int = 5) -> str:
    """Side-by-side figure of two views with the ``k`` best token matches as numbered yellow lines
    (EsViT's ``--vis_correspondence``). ``img1``/``img2``: (3, H, W) tensors in [0, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = img1.shape[-2:]
    coords1, _ = cell_centres(fea1.shape[0], h)
    coords2, _ = cell_centres(fea2.shape[0], img2.shape[-2])
    sim, idx = match_tokens(fea1, fea2)
    canvas = torch.ones(3, max(h, img2.shape[-2]), w + margin + img2.shape[-1])
    canvas[:, :h, :w] = img1
    canvas[:, :img2.shape[-2], w + margin:] = img2
    fig = plt.figure(figsize=(8, 4), frameon=False)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(canvas.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.axis("off")
    for n, i in enumerate(top_matches(sim, k).tolist()):
        j = int(idx[i])
        xs = [float(coords1[1, i]), margin + w + float(coords2[1, j])]
        ys = [float(coords1[0, i]), float(coords2[0, j])]
        ax.plot(xs, ys, "-", color="yellow", lw=1.5, marker="o", markersize=4)
        ax.text(xs[0], ys[0], str(n + 1), color="black", fontsize=8,
                bbox=dict(facecolor="yellow", alpha=0.8, pad=1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
