"""torchvision's tensor colour adjustments with one factor per image of a batch.

The formulas of ``torchvision.transforms.functional`` for float tensors -- ``rgb_to_grayscale`` (ITU-R
601-2 luma 0.2989 / 0.587 / 0.114), ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation``
(a blend ``f * img + (1 - f) * other`` clamped to [0, 1], ``f`` rounded to the image dtype as a Python
scalar would be) and ``adjust_hue`` (RGB -> HSV, ``h = (h + f) mod 1``, HSV -> RGB) -- applied to
images (N, C, H, W) with factors (N,), so that one call does what N torchvision calls do, with the
same values. One-channel images pass saturation and hue through unchanged, as torchvision does.
"""
from __future__ import annotations

import torch

LUMA = (0.2989, 0.587, 0.114)


def rgb_to_grayscale(img: torch.Tensor, num_output_channels: int = 1) -> torch.Tensor:
    """(..., 3, H, W) -> (..., num_output_channels, H, W) luma; one-channel images are copied."""
    if img.shape[-3] == 3:
        r, g, b = img.unbind(-3)
        gray = (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).to(img.dtype).unsqueeze(-3)
    else:
        gray = img.clone()
    return gray.expand(img.shape) if num_output_channels == 3 else gray


def _per_image(factor: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    return factor.to(img.dtype).view(-1, *([1] * (img.dim() - 1)))


def blend(img1: torch.Tensor, img2: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``(f * img1 + (1 - f) * img2).clamp(0, 1)`` with ``f`` (N,) in float64, ``1 - f`` taken before rounding."""
    f = factor.to(torch.float64)
    return (_per_image(f, img1) * img1 + _per_image(1.0 - f, img1) * img2).clamp(0, 1.0).to(img1.dtype)


def adjust_brightness(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = torch.mean(rgb_to_grayscale(img) if img.shape[-3] == 3 else img, dim=(-3, -2, -1), keepdim=True)
    return blend(img, mean, factor)


def adjust_saturation(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if img.shape[-3] == 1:
        return img
    return blend(img, rgb_to_grayscale(img), factor)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> HSV, hue in [0, 1); grey pixels (max == min) get h = s = 0 without a 0/0."""
    r, g, b = img.unbind(-3)
    maxc, minc = img.max(-3).values, img.min(-3).values
    grey = maxc == minc
    ones = torch.ones_like(maxc)
    span = maxc - minc
    s = span / torch.where(grey, ones, maxc)
    span = torch.where(grey, ones, span)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    return torch.stack((torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc), -3)


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) HSV -> RGB (the six hue sectors; p, q, t clamped to [0, 1])."""
    h, s, v = img.unbind(-3)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.to(torch.int32) % 6
    p = torch.clamp(v * (1.0 - s), 0.0, 1.0)
    q = torch.clamp(v * (1.0 - s * f), 0.0, 1.0)
    t = torch.clamp(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = torch.stack([torch.stack(c, 0) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], 0)
    idx = sector.unsqueeze(0).unsqueeze(0).expand(3, 1, *sector.shape).long()
    return torch.gather(table, 1, idx).squeeze(1).movedim(0, -3)


def adjust_hue(img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if img.shape[-3] == 1:
        return img
    h, s, v = rgb_to_hsv(img.to(torch.float32)).unbind(-3)
    h = (h + _per_image(factor, h)) % 1.0
    return hsv_to_rgb(torch.stack((h, s, v), -3)).to(img.dtype)


# ColorJitter's op ids (torchvision's fn_idx): 0 brightness, 1 contrast, 2 saturation, 3 hue
COLOR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(img: torch.Tensor, order: torch.Tensor, factors: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """torchvision's ``ColorJitter`` with per-image parameters: image n applies op ``order[n, k]`` at stage
    k (k = 0..3) with factor ``factors[n, op]``, where ``active[n, op]`` (ops whose range is None, and
    images the jitter skips, have it False).

    img (N, C, H, W); order (N, 4) int64, a permutation per row; factors (N, 4) float64; active (N, 4) bool.
    """
    for k in range(4):
        out = img.clone()
        for op, fn in enumerate(COLOR_OPS):
            sel = ((order[:, k] == op) & active[:, op]).nonzero().squeeze(1)
            if sel.numel():
                out[sel] = fn(img[sel], factors[sel, op])
        img = out
    return img
