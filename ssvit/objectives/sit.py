"""SiT-v1's objective and corruption (Atito et al. 2021; Sara-Ahmed/SiT at 1aacd6a: ``losses.py``,
``engine.py``, ``datasets/datasets_utils.py``), with the original names and signatures.

Losses (``MTL_loss(device, batch_size)``): rotation cross entropy (4 classes) + NT-Xent
``ContrastiveLoss(batch_size, temperature=0.5)`` between the contrastive embeddings of the two
views + L1 between the reconstructions and the clean images (mean over all pixels), each weighted by
its learned uncertainty ``s``: ``exp(-s * adj) * L + 0.5 * s`` with adj = 1 / 1 / 0.5. The original
returns a total of shape (1,) (the ``s`` are (1,) parameters); ``MTLLOSS`` here returns a scalar
(documented difference: same value, a 0-d tensor).

Corruption (``distortImages``), per image of a batch of normalised images, in order: a grey box
(``rgb2gray_patch``), a Gaussian-blurred box (``smooth_patch``: kernel size and sigma drawn before
the box, reflect padding), random N(0, 1) noise boxes up to 30 % of the pixels
(``drop_rand_patches``), then boxes copied from another image ``j`` of the partially corrupted batch
(when ``j != i``). All integer draws are NumPy ``randint`` (exclusive upper bound) as the original;
the functions take an optional ``rng`` (a ``numpy.random.RandomState``; default: NumPy's global
state, as the original) and a ``generator`` for the noise, and run on any device (the original draws
its noise with ``device='cuda'``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.precision import fp32_island


# --------------------------------------------------------------------------- losses
class ContrastiveLoss(nn.Module):
    """NT-Xent of SimCLR as SiT-v1: ``z = normalize(cat(e_i, e_j))`` (2B, K), cosine similarities
    ``S``; positives ``S[k, k +- B]``; the denominator sums ``exp(S_kl / T)`` over every ``l != k``
    (the positive included); mean of ``-log(exp(pos_k / T) / denom_k)`` over the 2B rows. ``B`` is
    fixed at construction (the loader drops the last batch). ``device`` is accepted for the original
    signature; the buffers follow the module (``.to``) and any device works."""

    def __init__(self, batch_size: int, device: str = "cuda", temperature: float = 0.5):
        super().__init__()
        self.batch_size = batch_size
        self.register_buffer("temperature", torch.tensor(temperature))
        self.register_buffer("negatives_mask", (~torch.eye(batch_size * 2, batch_size * 2, dtype=torch.bool)).float())

    @fp32_island
    def forward(self, emb_i: torch.Tensor, emb_j: torch.Tensor) -> torch.Tensor:
        if emb_i.shape[0] != self.batch_size or emb_j.shape[0] != self.batch_size:
            raise ValueError(f"ContrastiveLoss was built for batches of {self.batch_size}, got "
                             f"{emb_i.shape[0]} and {emb_j.shape[0]}")
        z_i = F.normalize(emb_i, dim=1)
        z_j = F.normalize(emb_j, dim=1)
        representations = torch.cat([z_i, z_j], dim=0)
        similarity_matrix = F.cosine_similarity(representations.unsqueeze(1), representations.unsqueeze(0), dim=2)
        sim_ij = torch.diag(similarity_matrix, self.batch_size)
        sim_ji = torch.diag(similarity_matrix, -self.batch_size)
        positives = torch.cat([sim_ij, sim_ji], dim=0)
        nominator = torch.exp(positives / self.temperature)
        denominator = self.negatives_mask.to(similarity_matrix) * torch.exp(similarity_matrix / self.temperature)
        loss_partial = -torch.log(nominator / torch.sum(denominator, dim=1))
        return torch.sum(loss_partial) / (2 * self.batch_size)


class LearnedLoss(nn.Module):
    """One task of the multi-task loss: ``calculate_loss`` (``'CrossEntropy'``, ``'L1'`` or
    ``'Contrastive'``) and ``calculate_weighted_loss(loss, s) = exp(-s * adj) * loss + 0.5 * s``
    (adj 1, 0.5, 1 respectively)."""

    ADJ = {"CrossEntropy": 1.0, "L1": 0.5, "Contrastive": 1.0}

    def __init__(self, losstype: str, batch_size: Optional[int] = None):
        super().__init__()
        if losstype not in self.ADJ:
            raise ValueError(f"losstype must be one of {sorted(self.ADJ)}, got {losstype!r}")
        if losstype == "Contrastive" and not batch_size:
            raise ValueError("the contrastive loss needs batch_size")
        self.losstype = losstype
        self.lossF = {"CrossEntropy": nn.CrossEntropyLoss(), "L1": nn.L1Loss()}.get(losstype) \
            or ContrastiveLoss(batch_size)
        self.adj = self.ADJ[losstype]

    @fp32_island
    def calculate_loss(self, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.lossF(output, label)

    @fp32_island
    def calculate_weighted_loss(self, loss: torch.Tensor, _s: torch.Tensor) -> torch.Tensor:
        return torch.exp(-_s * self.adj) * loss + 0.5 * _s


class MTLLOSS(nn.Module):
    """``MTLLOSS(loss_funcs, device)(output_rot, target_rot, output_contrastive, target_contrastive,
    output_recons, target_recons, rot_w, contrastive_w, reconstruction_w)`` ->
    ``(total (scalar), (r_loss, cn_loss, rec_loss))``; ``target_contrastive`` is the second view's
    embedding."""

    def __init__(self, loss_funcs, device=None):
        super().__init__()
        self._loss_funcs = nn.ModuleList(loss_funcs)
        self.device = device

    def forward(self, output_rot, target_rot, output_contrastive, target_contrastive, output_recons,
                target_recons, rot_w, contrastive_w, reconstruction_w):
        r_loss = self._loss_funcs[0].calculate_loss(output_rot, target_rot)
        rotation_loss = self._loss_funcs[0].calculate_weighted_loss(r_loss, rot_w)
        cn_loss = self._loss_funcs[1].calculate_loss(output_contrastive, target_contrastive)
        contrastive_loss = self._loss_funcs[1].calculate_weighted_loss(cn_loss, contrastive_w)
        rec_loss = self._loss_funcs[2].calculate_loss(output_recons, target_recons)
        reconstruction_loss = self._loss_funcs[2].calculate_weighted_loss(rec_loss, reconstruction_w)
        total = rotation_loss + contrastive_loss + reconstruction_loss
        return total.reshape(()), (r_loss, cn_loss, rec_loss)


def MTL_loss(device, batch_size: int) -> MTLLOSS:  # noqa: N802  (the original's name)
    """The learned-uncertainty loss: rotation CE, contrastive (``batch_size``), L1 reconstruction."""
    return MTLLOSS([LearnedLoss("CrossEntropy"), LearnedLoss("Contrastive", batch_size), LearnedLoss("L1")], device)


# --------------------------------------------------------------------------- rotation
def RandomRotation(X: torch.Tensor, orientation: Optional[int] = None, rng=None):  # noqa: N802
    """(C, H, W) -> (rotated, orientation): 0 none, 1 = 90 degrees clockwise, 2 = 180, 3 = 90
    counter-clockwise; ``orientation`` drawn ``randint(0, 4)`` (NumPy) when None."""
    if orientation is None:
        orientation = int((rng or np.random).randint(0, 4))
    if orientation == 1:
        X = X.rot90(-1, [1, 2])
    elif orientation == 2:
        X = X.rot90(-1, [1, 2]).rot90(-1, [1, 2])
    elif orientation == 3:
        X = X.rot90(1, [1, 2])
    elif orientation != 0:
        raise ValueError(f"orientation must be 0..3, got {orientation}")
    return X, orientation


# --------------------------------------------------------------------------- corruption
def _box(rng, H: int, W: int, tolr, max_h: int, max_w: int):
    """The original's random box: top/left in [0, H - t), bottom/right = min(top + randint(t, max), H)."""
    r = rng.randint(0, H - tolr[0])
    c = rng.randint(0, W - tolr[1])
    h = min(rng.randint(tolr[0], max_h) + r, H)
    w = min(rng.randint(tolr[1], max_w) + c, W)
    return r, c, h, w


def drop_rand_patches(X: torch.Tensor, X_rep: Optional[torch.Tensor] = None, max_drop: float = 0.3,
                      max_block_sz: float = 0.25, tolr: float = 0.05, rng=None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fill random boxes of ``X`` (C, H, W), in place, with N(0, 1) noise (or ``X_rep``'s pixels at the
    same place) until the summed box areas (overlaps counted again) reach ``U(0, max_drop) * H * W``."""
    rng = rng or np.random
    C, H, W = X.size()
    n_drop_pix = rng.uniform(0, max_drop) * H * W
    mx_h, mx_w = int(H * max_block_sz), int(W * max_block_sz)
    t = (int(tolr * H), int(tolr * W))
    total = 0
    while total < n_drop_pix:
        r, c, h, w = _box(rng, H, W, t, mx_h, mx_w)
        if X_rep is None:
            X[:, r:h, c:w] = torch.empty((C, h - r, w - c), dtype=X.dtype, device=X.device).normal_(generator=generator)
        else:
            X[:, r:h, c:w] = X_rep[:, r:h, c:w]
        total += (h - r) * (w - c)
    return X


def rgb2gray_patch(X: torch.Tensor, tolr: float = 0.05, rng=None) -> torch.Tensor:
    """A random box of ``X`` (C, H, W) replaced, in place, by its channel mean."""
    rng = rng or np.random
    C, H, W = X.size()
    t = (int(tolr * H), int(tolr * W))
    r, c, h, w = _box(rng, H, W, t, H, W)
    X[:, r:h, c:w] = torch.mean(X[:, r:h, c:w], dim=0).unsqueeze(0).repeat(C, 1, 1)
    return X


def gaussian_kernel1d(size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """kornia's ``get_gaussian_kernel1d``: ``exp(-x^2 / (2 sigma^2))`` over ``x = arange(size) - size // 2``,
    normalised to sum 1."""
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    g = torch.exp(-x.pow(2.0) / (2 * sigma ** 2))
    return g / g.sum()


def gaussian_blur2d(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """kornia's ``GaussianBlur2d((k, k), (s, s))`` on (B, C, h, w): reflect padding, separable kernel.
    Reflect padding needs the box larger than half the kernel; a smaller box (possible on small
    images; the original raises there) is padded by replication."""
    k = gaussian_kernel1d(kernel_size, sigma, x.device, x.dtype)
    C = x.shape[1]
    p = kernel_size // 2
    mode = "reflect" if min(x.shape[-2:]) > p else "replicate"
    x = F.pad(x, (p, p, p, p), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def smooth_patch(X: torch.Tensor, max_kernSz: int = 15, gauss: float = 5, tolr: float = 0.05, rng=None) -> torch.Tensor:
    """A random box of ``X`` (C, H, W) blurred, in place: kernel size ``2 * (randint(3, max+1) // 2) + 1``
    and sigma ``rand() * gauss + 0.1`` drawn first, then the box."""
    rng = rng or np.random
    kern = 2 * (rng.randint(3, max_kernSz + 1) // 2) + 1
    sigma = rng.rand() * gauss + 0.1
    C, H, W = X.size()
    t = (int(tolr * H), int(tolr * W))
    r, c, h, w = _box(rng, H, W, t, H, W)
    if h > r and w > c:  # an empty box (possible below 20 px, where tolr is 0) has nothing to blur
        X[:, r:h, c:w] = gaussian_blur2d(X[:, r:h, c:w].unsqueeze(0), kern, sigma)[0]
    return X


@torch.no_grad()
def distortImages(samples: torch.Tensor, rng=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:  # noqa: N802
    """A corrupted copy of the batch ``samples`` (B, C, H, W) (see the module doc)."""
    rng = rng or np.random
    n_imgs = samples.size(0)
    samples_aug = samples.detach().clone()
    for i in range(n_imgs):
        samples_aug[i] = rgb2gray_patch(samples_aug[i], rng=rng)
        samples_aug[i] = smooth_patch(samples_aug[i], rng=rng)
        samples_aug[i] = drop_rand_patches(samples_aug[i], rng=rng, generator=generator)
        idx_rnd = rng.randint(0, n_imgs)
        if idx_rnd != i:
            samples_aug[i] = drop_rand_patches(samples_aug[i], samples_aug[idx_rnd], rng=rng)
    return samples_aug


# =========================================================================== SiT-v2 (HEAD)
class SimCLR(nn.Module):
    """SiT-v2's momentum contrastive loss (``SimCLR(temp)``): the student's and the teacher's outputs
    (2B, K) are split into the two views; ``CL(q, k) = CE(normalize(q) . all_gather(normalize(k))^T / temp,
    arange(B) + B * rank) * 2 temp``; the loss is ``CL(s_0, t_1) + CL(s_1, t_0)`` (teacher detached).
    Works without an initialised process group (one rank; the original requires one)."""

    def __init__(self, temp: float = 0.2):
        super().__init__()
        self.temp = temp

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
        from ..utils.distributed import get_rank, get_world_size
        k = concat_all_gather(k)
        logits = torch.einsum("nc,mc->nm", [q, k]) / self.temp
        N = logits.shape[0]
        labels = torch.arange(N, dtype=torch.long, device=logits.device) + N * (get_rank() if get_world_size() > 1 else 0)
        return F.cross_entropy(logits, labels) * (2 * self.temp)

    @fp32_island
    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        s = student_output.chunk(2)
        t = teacher_output.detach().chunk(2)
        return self.contrastive_loss(s[0], t[1]) + self.contrastive_loss(s[1], t[0])


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``all_gather`` of ``tensor`` over the ranks, concatenated (the tensor itself without a group);
    the exchange runs on the backend's device (NCCL: GPU, Gloo: CPU)."""
    from ..utils.distributed import collective_device, get_world_size, is_dist
    if not is_dist() or get_world_size() == 1:
        return tensor
    comm = collective_device()
    t = tensor.to(comm)
    out = [torch.empty_like(t) for _ in range(get_world_size())]
    torch.distributed.all_gather(out, t)
    return torch.cat(out, dim=0).to(tensor.device)


def GMML_drop_rand_patches(X: torch.Tensor, X_rep: Optional[torch.Tensor] = None, drop_type: str = "noise",  # noqa: N802
                           max_replace: float = 0.7, align: int = 16, max_block_sz: float = 0.3, rng=None,
                           generator: Optional[torch.Generator] = None):
    """GMML corruption of one image ``X`` (C, H, W), in place: blocks (top / left aligned to
    ``align``, sides up to ``max_block_sz`` of the image, rounded to ``align``) are filled -- from
    ``X_rep`` at the same place, else per ``drop_type`` (one of its ``-``-separated entries, drawn):
    ``noise`` N(0, 1), ``zeros``, or a block copied from another place of ``X`` -- until the mask
    covers ``U(min(0.5, max_replace), max_replace) * H * W`` pixels. Returns ``(X, mask)``, mask
    (C, H, W) of 0/1. The original re-seeds NumPy from OS entropy on every call; here the draws come
    from ``rng`` (default: NumPy's global state, which the dataset seeds per sample)."""
    rng = rng or np.random
    C, H, W = X.size()
    n_drop_pix = rng.uniform(min(0.5, max_replace), max_replace) * H * W
    mx_h, mx_w = int(H * max_block_sz), int(W * max_block_sz)
    align = max(1, align)
    mask = torch.zeros_like(X)
    drop_t = rng.choice(drop_type.split("-"))
    while mask[0].sum() < n_drop_pix:
        r = (rng.randint(0, H - align) // align) * align
        c = (rng.randint(0, W - align) // align) * align
        h = round(min(rng.randint(align, mx_h), H - r) / align) * align
        w = round(min(rng.randint(align, mx_w), W - c) / align) * align
        if X_rep is not None:
            X[:, r:r + h, c:c + w] = X_rep[:, r:r + h, c:c + w].detach().clone()
        elif drop_t == "noise":
            X[:, r:r + h, c:c + w] = torch.empty((C, h, w), dtype=X.dtype, device=X.device).normal_(generator=generator)
        elif drop_t == "zeros":
            X[:, r:r + h, c:c + w] = 0
        else:
            r2 = (rng.randint(0, H - h) // align) * align
            c2 = (rng.randint(0, W - w) // align) * align
            X[:, r:r + h, c:c + w] = X[:, r2:r2 + h, c2:c2 + w].detach().clone()
        mask[:, r:r + h, c:c + w] = 1
    return X, mask


@torch.no_grad()
def GMML_replace_list(samples: torch.Tensor, corrup_prev: torch.Tensor, masks_prev: torch.Tensor,  # noqa: N802
                      drop_type: str = "noise", max_replace: float = 0.35, align: int = 16, rng=None, py_rng=None):
    """SiT-v2's batch re-corruption (``collate_batch``): for each image i, ``j = randint(0, B)``; with
    probability ``1 / (len(drop_type.split('-')) + 1)`` (1 for ``''``) the *clean* image i is corrupted
    with blocks of clean image j (which may be i itself: a mask over unchanged pixels, as the
    original), else its previous corruption and mask are kept. Returns ``(samples_aug, masks)``."""
    import random as _random
    rng = rng or np.random
    py_rng = py_rng or _random
    rep_drop = 1 if drop_type == "" else (1 / (len(drop_type.split("-")) + 1))
    n_imgs = samples.size(0)
    samples_aug = samples.detach().clone()
    masks = torch.zeros_like(samples_aug)
    for i in range(n_imgs):
        idx_rnd = rng.randint(0, n_imgs)
        if py_rng.random() < rep_drop:
            samples_aug[i], masks[i] = GMML_drop_rand_patches(samples_aug[i], samples[idx_rnd], max_replace=max_replace,
                                                              align=align, rng=rng)
        else:
            samples_aug[i], masks[i] = corrup_prev[i], masks_prev[i]
    return samples_aug, masks
