"""RelViT's self-supervised signals and losses (Camporese et al. 2022, "Where are my neighbors?";
guglielmocamporese/relvit ``datasets/encode_locations.py``, ``utils.py``, ``datasets/transforms.py``,
``datasets/patch_transforms.py``), with the original names and signatures.

Relations: for patches a, b of the ``side x side`` grid, ``conn[a, b]`` is where **a lies relative
to b** as one of 9 classes ``3 * v + h`` (v: U/C/D = row above / same / below, h: L/C/R = column
left / same / right; 0 LU .. 4 CC .. 8 RD). ``SSLSignal(patches)`` permutes the identity-order
matrices by ``perm = patches.reshape(-1)``: ``relations = conn[perm][:, perm]`` (int64 N x N),
``abs_positions = arange(N)[perm]``, ``distances`` (Euclidean, / max, mapped to [-1, 1]) and
``angles`` (arccos of the position vectors' cosine with the original's ``+ 1e-4`` in the
denominator, / pi, / max, mapped to [-1, 1]; float32) -- all torch tensors here (the original
returns the angles as a NumPy array).

``cross_entropy(logits, labels, smooth, dropout)`` (class axis 1): plain CE without smoothing
(dropout is then ignored, as the original); otherwise ``(1 - e) NLL + e mean_c(-log p_c)`` per element,
``F.dropout`` on it, mean. ``accuracy``: argmax over axis 1, mean over all elements.

``create_megapatches_grid(x, side, patch_size)``: ``side - 1`` random cuts of the ``H // patch_size``
cells, the rows **and** the columns split by the row partition (QUIRK kept: the separately drawn
column cuts are unused), every chunk resized to ``patch_size`` **without antialiasing** (the
original's torchvision 0.9; ``antialias=True`` enables it).

Patch transforms (``get_patch_transforms(patch_trans, patch_size)``, e.g. ``colJitter:0.8-grayScale:0.2``):
per-patch RandomCrop(round(p / 1.15)) then Resize(p) (or ``centCrop``: CenterCrop(ceil(p / 1.15)) and a
per-patch RandomResizedCrop(p, scale 0.85)), per-patch ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8,
RandomGrayscale 0.2, ``randomNoise`` (N(0, 1) patch) 0.2. QUIRKS kept: the numbers after ':' are
parsed and ignored; the colour ops run on the normalised tensor (torchvision clamps it to [0, 1]).
The per-patch loops are vectorised (``ssvit.data.patch_transforms``) with the same draws and values.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms

from ..data.patch_transforms import (PatchColorJitter, PatchRandomCrop, PatchRandomGrayscale, PatchRandomNoise,
                                     PatchRandomResizedCrop)

RELATION_NAMES = ("LU", "CU", "RU", "LC", "CC", "RC", "LD", "CD", "RD")


# --------------------------------------------------------------------------- label matrices
def create_label_matrix(num_patches: int) -> np.ndarray:
    """The (2s - 1) x (2s - 1) class map centred on a reference patch (s = sqrt(num_patches))."""
    s = int(math.sqrt(num_patches))
    side = 2 * s - 1
    c = (side - 1) // 2
    v = np.sign(np.arange(side) - c) + 1  # 0 above, 1 same row, 2 below
    return (3 * v[:, None] + v[None, :]).astype(np.int64)


def create_patch_matrix(num_patches: int) -> np.ndarray:
    side = int(math.sqrt(num_patches))
    return np.arange(num_patches).reshape(side, side)


def create_connectivity_matrix(patches) -> np.ndarray:
    """(N, N) relation classes of the patches in the order of ``patches`` (a (side, side) index array)."""
    flat = np.asarray(patches).reshape(-1)
    n = len(flat)
    side = int(math.sqrt(n))
    rows, cols = np.arange(n) // side, np.arange(n) % side
    v = np.sign(rows[:, None] - rows[None, :]) + 1  # where a is relative to b
    h = np.sign(cols[:, None] - cols[None, :]) + 1
    conn = (3 * v + h).astype(np.int64)
    return conn[flat, :][:, flat]


def _grid_points(side: int, offset: float = 0.0) -> torch.Tensor:
    x = torch.arange(side).unsqueeze(0).repeat(side, 1) + offset
    y = torch.arange(side).unsqueeze(1).repeat(1, side) + offset
    return torch.stack([x, y], -1).to(torch.float32).view(-1, 2)


def create_dist_matrix(patches, norm: int = 2, vmin: float = -1, vmax: float = 1) -> torch.Tensor:
    flat = np.asarray(patches).reshape(-1)
    side = int(np.sqrt(len(flat)))
    p = _grid_points(side)
    d = torch.cdist(p.unsqueeze(0), p.unsqueeze(0), p=norm).squeeze(0)
    d = d[flat, :][:, flat]
    return d / d.max() * (vmax - vmin) + vmin


def create_angle_matrix(patches, vmin: float = -1, vmax: float = 1) -> torch.Tensor:
    flat = np.asarray(patches).reshape(-1)
    side = int(np.sqrt(len(flat)))
    p = _grid_points(side, side / 2)
    norms = torch.linalg.vector_norm(p, dim=1)
    cos = (p @ p.T) / (norms[:, None] * norms[None, :] + 1e-4)
    a = torch.acos(cos) / np.pi
    a.fill_diagonal_(0.0)
    a = a[flat, :][:, flat].to(torch.float32)
    return a / a.max() * (vmax - vmin) + vmin


def create_abs_positions_matrix(patches) -> torch.Tensor:
    return torch.arange(np.asarray(patches).size)


class SSLSignal:
    """``SSLSignal(...)(patches)`` -> dict of ``relations`` / ``distances`` / ``angles`` /
    ``abs_positions`` for the patch order ``patches`` ((side, side) original indices)."""

    def __init__(self, use_relations: bool = True, use_distances: bool = True, use_angles: bool = True,
                 use_abs_positions: bool = True):
        self.use_relations, self.use_distances = use_relations, use_distances
        self.use_angles, self.use_abs_positions = use_angles, use_abs_positions
        self._n: Optional[int] = None

    def _init(self, n: int) -> None:
        side = int(np.sqrt(n))
        ident = np.arange(n).reshape(side, side)
        if self.use_relations:
            self.conn_matrix = torch.from_numpy(create_connectivity_matrix(ident)).to(torch.int64)
        if self.use_distances:
            self.dist_matrix = create_dist_matrix(ident)
        if self.use_angles:
            self.angle_matrix = create_angle_matrix(ident)
        if self.use_abs_positions:
            self.abs_positions_matrix = create_abs_positions_matrix(ident)
        self._n = n

    def __call__(self, patches) -> dict:
        flat = torch.as_tensor(np.asarray(patches).reshape(-1), dtype=torch.long)
        if self._n != len(flat):
            self._init(len(flat))
        out = {}
        if self.use_relations:
            out["relations"] = self.conn_matrix[flat, :][:, flat]
        if self.use_distances:
            out["distances"] = self.dist_matrix[flat, :][:, flat]
        if self.use_angles:
            out["angles"] = self.angle_matrix[flat, :][:, flat]
        if self.use_abs_positions:
            out["abs_positions"] = self.abs_positions_matrix[flat]
        return out


# --------------------------------------------------------------------------- losses and metrics
def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 0.0, dropout: float = 0.0) -> torch.Tensor:
    if smooth == 0.0:
        return F.cross_entropy(logits, labels)
    logprobs = F.log_softmax(logits, dim=1)
    nll_loss = -logprobs.gather(dim=1, index=labels.unsqueeze(1)).squeeze(1)
    smooth_loss = -logprobs.mean(dim=1)
    loss = (1.0 - smooth) * nll_loss + smooth * smooth_loss
    if dropout > 0.0:
        loss = F.dropout(loss, p=dropout)
    return loss.mean()


def accuracy(preds: torch.Tensor, labels: torch.Tensor, preds_with_logits: bool = True) -> torch.Tensor:
    if preds_with_logits:
        preds = F.softmax(preds, 1)
    return (1.0 * (preds.argmax(1) == labels)).mean()


# --------------------------------------------------------------------------- patches and megapatches
def image2patches(x: torch.Tensor, patch_size) -> torch.Tensor:
    """(C, H, W) -> non-overlapping patches (C, N, p, p), row-major."""
    C = x.shape[0]
    ps = tuple(patch_size) if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
    u = F.unfold(x.unsqueeze(0), kernel_size=ps, stride=ps)  # (1, C*p*p, N)
    return u.view(C, ps[0], ps[1], -1).permute(0, 3, 1, 2)


def patches2image(x: torch.Tensor, output_size) -> torch.Tensor:
    """(C, N, p, p) -> (C, H, W), the inverse of ``image2patches``."""
    C, N, ph, pw = x.shape
    cols = x.permute(0, 2, 3, 1).reshape(1, C * ph * pw, N)
    return F.fold(cols, output_size, kernel_size=(ph, pw), stride=(ph, pw)).squeeze(0)


def create_megapatches_grid(x: torch.Tensor, side: int, patch_size: int = 32, antialias: bool = False,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(C, H, W) -> (C, side * p, side * p) grid of resized megapatches (see the module doc)."""
    C, H, W = x.shape
    side_in = int(H / patch_size)
    if not 1 <= side <= side_in:
        raise ValueError(f"side_megapatches must be in [1, {side_in}] for {H} px and patch {patch_size}, got {side}")

    def cuts():
        idx = torch.randperm(side_in - 1, generator=generator)[:side - 1] + 1
        idx = torch.sort(torch.cat([idx, torch.tensor([side_in])]))[0]
        return (torch.cat([idx, torch.tensor([0])]) - torch.cat([torch.tensor([0]), idx]))[:-1] * patch_size
    cuts()  # the original draws the column cuts first and never uses them (QUIRK)
    idxs_h = cuts()
    sizes = [int(s) for s in idxs_h]
    chunks = []
    for row in torch.split(x, sizes, dim=1):
        chunks.append(torch.stack([F.interpolate(col.unsqueeze(0), size=(patch_size, patch_size), mode="bilinear",
                                                 align_corners=False, antialias=antialias)[0]
                                   for col in torch.split(row, sizes, dim=2)], 1))
    grid = torch.stack(chunks, 1)  # (C, side, side, p, p)
    return patches2image(grid.reshape(C, -1, patch_size, patch_size), (side * patch_size, side * patch_size))


# --------------------------------------------------------------------------- patch transforms
KNOWN_PATCH_TRANSFORMS = ("centCrop", "colJitter", "grayScale", "randomNoise")


def get_patch_transforms(patch_trans: str, patch_size: int):
    """The per-patch transform of ``patch_trans`` ((C, N, p, p) -> (C, N, p, p)), or None for ``none``."""
    if patch_trans in ("none", "None", ""):
        return None
    names = []
    for t in patch_trans.split("-"):
        names.append(t.split(":")[0] if ":" in t else t)  # the values are parsed and ignored (QUIRK)
    unknown = [n for n in names if n not in KNOWN_PATCH_TRANSFORMS]
    if unknown:
        raise ValueError(f"patch transforms {unknown} not supported (known: {', '.join(KNOWN_PATCH_TRANSFORMS)})")
    tf = [lambda x: x.transpose(0, 1)]
    if "centCrop" in names:
        tf += [transforms.CenterCrop(int(np.ceil(patch_size / 1.15))),
               PatchRandomResizedCrop(patch_size, scale=(0.85, 0.85), ratio=(1, 1))]
    else:
        tf += [PatchRandomCrop(int(np.round(patch_size / 1.15))), transforms.Resize(patch_size)]
    if "colJitter" in names:
        tf += [PatchColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)]
    if "grayScale" in names:
        tf += [PatchRandomGrayscale(p=0.2)]
    if "randomNoise" in names:
        tf += [PatchRandomNoise(p=0.2, mean=0.0, std=1.0)]
    tf += [lambda x: x.transpose(0, 1)]
    return transforms.Compose(tf)
