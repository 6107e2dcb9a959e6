"""Semi-supervised label propagation through a frame sequence with frozen patch features
(DINO, Caron et al. 2021, ``eval_video_segmentation.py``, after Liu et al.'s UVC; anthonyhu/dino's
I-PACE variant).

Frame t's soft labels are a top-k affinity-weighted sum of the labels of its contexts: the first
frame (its one-hot annotation) and the soft predictions of up to ``n_last_frames`` previous frames
(a FIFO queue). With unit patch features ``q`` (target) and ``k`` (sources)::

    A = exp(q k^T / 0.1) * M          (n_ctx, hw_t, hw_s); M: source within a (2r+1)^2 window, r > 0
    A -> (n_ctx * hw_s, hw_t); per target keep the entries >= its k-th largest (ties kept), others 0
    A /= A.sum(0);  seg_t = segs (C, n_ctx * hw_s) @ A

Shapes: features (h*w, D) per frame; segs (1, C, h, w). The temperature 0.1 is the original's.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

TEMPERATURE = 0.1


def neighbourhood_mask(h: int, w: int, radius: int) -> torch.Tensor:
    """(h*w, h*w) float mask: 1 where source (k, l) lies within ``radius`` patches of target (i, j) in
    both directions (the original's ``restrict_neighborhood``), row = target, column = source."""
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    near = ((ii[:, None] - ii[None, :]).abs() <= radius) & ((jj[:, None] - jj[None, :]).abs() <= radius)
    return near.float()


def to_one_hot(labels: torch.Tensor, n_dims: Optional[int] = None) -> torch.Tensor:
    """(1, h, w) integer labels -> (1, n_dims, h, w) float one-hot (n_dims defaults to max + 1)."""
    if n_dims is None:
        n_dims = int(labels.max()) + 1
    _, h, w = labels.shape
    return F.one_hot(labels.long().reshape(h, w), n_dims).permute(2, 0, 1).unsqueeze(0).float()


def norm_mask(mask: torch.Tensor) -> torch.Tensor:
    """(C, H, W): every channel whose max is > 0 min-max normalised to [0, 1] (the original's ``norm_mask``,
    in place)."""
    for c in range(mask.shape[0]):
        m = mask[c]
        if m.max() > 0:
            m = m - m.min()
            mask[c] = m / m.max()
    return mask


AFFINITY_BUDGET = 2 ** 26  # elements of one affinity chunk (256 MiB in fp32)


def label_propagation(feat_tar: torch.Tensor, ctx_feats: list[torch.Tensor], ctx_segs: list[torch.Tensor],
                      topk: int = 5, mask: Optional[torch.Tensor] = None, chunk: Optional[int] = None) -> torch.Tensor:
    """Soft labels (1, C, h, w) of a target frame.

    feat_tar (hw, D) target patch features; ctx_feats: n tensors (D, hw) (features transposed, as the
    original queues them); ctx_segs: n tensors (1, C, h, w); mask: (hw, hw) or None (no restriction).
    Every target patch is computed on its own, so the targets are taken ``chunk`` at a time (default: as
    many as fit ``AFFINITY_BUDGET`` affinities) -- the same numbers as the original's one
    (n, hw, hw) affinity tensor, in bounded memory (ViT-S/8 on DAVIS: 6240 patches a frame).
    """
    q = F.normalize(feat_tar, dim=1, p=2)
    keys = F.normalize(torch.stack(ctx_feats), dim=1, p=2)  # (n, D, hw_s)
    n, _, hw_s = keys.shape
    segs = torch.cat(ctx_segs)
    _, C, h, w = segs.shape
    segs = segs.reshape(n, C, -1).transpose(2, 1).reshape(-1, C).T  # (C, n * hw_s)
    hw = q.shape[0]
    chunk = chunk or max(1, AFFINITY_BUDGET // (n * hw_s))
    out = []
    for c0 in range(0, hw, chunk):
        aff = torch.exp(torch.matmul(q[c0:c0 + chunk].unsqueeze(0), keys) / TEMPERATURE)  # (n, t, hw_s)
        if mask is not None:
            aff = aff * mask[c0:c0 + chunk]
        aff = aff.transpose(2, 1).reshape(n * hw_s, -1)  # (n * hw_s, t): sources x targets
        kth = torch.topk(aff, dim=0, k=min(topk, aff.shape[0])).values.min(dim=0).values
        aff = torch.where(aff < kth, torch.zeros_like(aff), aff)
        aff = aff / aff.sum(dim=0, keepdim=True)
        out.append(segs @ aff)
    return torch.cat(out, 1).reshape(1, C, h, w)


class PropagationStep(NamedTuple):
    index: int            # frame index in the sequence (1, 2, ...)
    soft: torch.Tensor    # (1, C, h, w) propagated soft labels


def propagate(first_feat: torch.Tensor, first_seg: torch.Tensor, feats: Iterable[torch.Tensor],
              n_last_frames: int = 7, topk: int = 5, size_mask_neighborhood: int = 12,
              grid: Optional[tuple[int, int]] = None) -> Iterator[PropagationStep]:
    """Propagate ``first_seg`` (1, C, h, w) from the first frame (features ``first_feat`` (hw, D)) through
    the later frames' features (each (hw, D)), the original's queue of the ``n_last_frames`` previous
    soft predictions beside the first frame. ``grid`` = (h, w) of the feature map (default: the seg's)."""
    if n_last_frames < 1:
        raise ValueError(f"--n_last_frames must be >= 1 (the original deadlocks on 0), got {n_last_frames}")
    if topk < 1:
        raise ValueError(f"--topk must be >= 1, got {topk}")
    h, w = grid if grid is not None else first_seg.shape[-2:]
    if first_seg.shape[-2] * first_seg.shape[-1] != h * w:
        raise ValueError(f"label grid {tuple(first_seg.shape[-2:])} does not match the feature grid {(h, w)}")
    mask = neighbourhood_mask(h, w, size_mask_neighborhood).to(first_feat.device) \
        if size_mask_neighborhood > 0 else None
    first_seg = first_seg.to(first_feat.device)
    queue: deque = deque(maxlen=n_last_frames)
    first_t = first_feat.T
    for t, feat in enumerate(feats, start=1):
        soft = label_propagation(feat, [first_t] + [f for f, _ in queue], [first_seg] + [s for _, s in queue],
                                 topk, mask)
        queue.append((feat.T, soft))
        yield PropagationStep(t, soft)


def hard_labels(soft: torch.Tensor, size: Optional[tuple[int, int]] = None,
                scale_factor: Optional[int] = None) -> torch.Tensor:
    """(1, C, h, w) soft labels -> (H, W) uint8 ids, the originals' rule: bilinear upsampling
    (``align_corners=False``; by ``scale_factor`` -- DAVIS -- or straight to ``size`` -- I-PACE ``cleanup``),
    ``norm_mask``, argmax over the channels (the first of equal maxima).

    Only channels with some mass are upsampled (I-PACE one-hots have 256 channels): the others stay 0, so
    the argmax is the same, a pixel where every channel is 0 giving id 0 as the full argmax does."""
    active = (soft[0].flatten(1).amax(1) > 0).nonzero().squeeze(1)
    if active.numel() == 0:
        active = torch.zeros(1, dtype=torch.long)  # all channels 0: id 0 everywhere
    sub = soft[:, active]
    if scale_factor is not None:
        up = F.interpolate(sub, scale_factor=scale_factor, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]
    else:
        up = F.interpolate(sub, size=size, mode="bilinear", align_corners=False)[0]
    best, idx = norm_mask(up).max(dim=0)
    return torch.where(best > 0, active[idx], torch.zeros_like(idx)).to(torch.uint8)


@torch.no_grad()
def patch_features(model: nn.Module, frame: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, int, int]:
    """(3, H, W) normalised frame -> ((h*w, D) last-block final-normed patch tokens, h, w), the prefix
    tokens (CLS) dropped; h = H // p, w = W // p (the bottom/right remainder is not seen)."""
    h, w = frame.shape[1] // patch_size, frame.shape[2] // patch_size
    # the original DINO ViT's strided conv ignores the remainder; timm's patch embedding refuses it
    x = frame[:, :h * patch_size, :w * patch_size].unsqueeze(0).to(next(model.parameters()).device)
    out = model.forward_intermediates(x, 1)[0]
    out = out[0, model.num_prefix_tokens:]
    if out.shape[0] != h * w:
        raise ValueError(f"the model gave {out.shape[0]} patch tokens for a {h}x{w} grid")
    return out, h, w
