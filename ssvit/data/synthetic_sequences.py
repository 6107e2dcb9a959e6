"""Generated video sequences with known masks, for the segmentation-propagation tools (nothing downloaded).

A sequence: a textured background (smooth colour noise plus grain) over which a few textured shapes
(disc, square, diamond; each a saturated colour with stripes or checks) move with constant velocity,
bouncing off the borders, the later ones in front. ``frame_sequence`` returns the frames (T, H, W, 3)
uint8 and the label maps (T, H, W) uint8: 0 background, k for the k-th shape (optionally a band of
255 = ignore along the bottom, as the I-PACE ego-vehicle). ``write_davis`` / ``write_ipace`` lay them
out as DAVIS-2017 (``JPEGImages/480p``, ``Annotations/480p`` palette PNGs, ``ImageSets/2017/val.txt``) and
as I-PACE (``<run>/image/*.jpg``, ``<run>/segmentation/*.png`` L-mode class ids, shape k -> class
``IPACE_IDS[k]``).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 200, 30), (200, 60, 220))
IPACE_IDS = (10, 0, 13, 8, 19, 2)  # background road, then person, car, ... (any of the 27 classes)


class Sequence(NamedTuple):
    frames: np.ndarray   # (T, H, W, 3) uint8
    labels: np.ndarray   # (T, H, W) uint8


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    coarse = rng.random((cells + 1, cells + 1, 3))
    ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    c = coarse
    top = c[y0][:, x0] * (1 - fx) + c[y0][:, x0 + 1] * fx
    bot = c[y0 + 1][:, x0] * (1 - fx) + c[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _shape_mask(kind: int, h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    dy, dx = yy - cy, xx - cx
    if kind == 0:
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == 1:
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    return np.abs(dy) + np.abs(dx) <= 1.3 * r


def frame_sequence(seed: int, n_frames: int = 12, size: tuple[int, int] = (100, 140), n_objects: int = 3,
                   ignore_band: int = 0) -> Sequence:
    """One generated sequence (see the module doc); ``size`` = (H, W), any values."""
    rng = np.random.default_rng(seed)
    h, w = size
    background = 0.35 + 0.3 * _smooth_noise(rng, h, w)
    r_max = max(4.0, min(h, w) / 7)
    objects = []
    for k in range(n_objects):
        r = rng.uniform(0.6, 1.0) * r_max
        pos = np.array([rng.uniform(r, h - r), rng.uniform(r, w - r)])
        vel = rng.uniform(-1, 1, 2) * min(h, w) / 25
        colour = np.asarray(COLOURS[k % len(COLOURS)]) / 255.0
        period = int(rng.integers(3, 7))
        objects.append((k % 3, r, pos, vel, colour, period, k % 2))
    frames = np.empty((n_frames, h, w, 3), dtype=np.uint8)
    labels = np.zeros((n_frames, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(n_frames):
        img = background + 0.06 * rng.standard_normal((h, w, 3))
        lab = np.zeros((h, w), dtype=np.uint8)
        for k, (kind, r, pos, vel, colour, period, checks) in enumerate(objects):
            p = pos + t * vel
            for d, lim in ((0, h), (1, w)):  # bounce: reflect the unbounded path into [r, lim - r]
                span = max(lim - 2 * r, 1e-6)
                q = (p[d] - r) % (2 * span)
                p[d] = r + (q if q <= span else 2 * span - q)
            m = _shape_mask(kind, h, w, p[0], p[1], r)
            pattern = ((yy // period + xx // period) % 2) if checks else ((yy + xx) // period % 2)
            tex = colour * (0.75 + 0.25 * pattern[..., None])
            img[m] = tex[m]
            lab[m] = k + 1
        if ignore_band:
            lab[h - ignore_band:] = 255
        frames[t] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        labels[t] = lab
    return Sequence(frames, labels)


def write_davis(root: str, n_sequences: int = 2, n_frames: int = 12, size: tuple[int, int] = (100, 140),
                seed: int = 0, palette: Optional[np.ndarray] = None) -> list[str]:
    """DAVIS-2017 layout under ``root``; returns the sequence names (also in ``ImageSets/2017/val.txt``)."""
    from ..utils.label_png import davis_palette, imwrite_indexed
    palette = davis_palette() if palette is None else palette
    names = []
    for s in range(n_sequences):
        name = f"synthetic-{s:02d}"
        seq = frame_sequence(seed + s, n_frames, size)
        img_dir = os.path.join(root, "JPEGImages", "480p", name)
        ann_dir = os.path.join(root, "Annotations", "480p", name)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for t in range(n_frames):
            Image.fromarray(seq.frames[t]).save(os.path.join(img_dir, f"{t:05d}.jpg"), quality=95)
            imwrite_indexed(os.path.join(ann_dir, f"{t:05d}.png"), seq.labels[t], palette)
        names.append(name)
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "2017", "val.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    return names


def write_ipace(root: str, n_runs: int = 2, n_frames: int = 12, size: tuple[int, int] = (100, 140), seed: int = 100,
                ignore_band: int = 6) -> list[str]:
    """I-PACE layout under ``root`` (L-mode class-id PNGs, 255 = ignore band); returns the run names."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[:len(IPACE_IDS)] = IPACE_IDS
    names = []
    for r in range(n_runs):
        name = f"run_{r:02d}"
        seq = frame_sequence(seed + r, n_frames, size, ignore_band=ignore_band)
        img_dir, seg_dir = os.path.join(root, name, "image"), os.path.join(root, name, "segmentation")
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(seg_dir, exist_ok=True)
        for t in range(n_frames):
            stem = f"{1000 + 40 * t:08d}"  # timestamps, not 0-based indices
            Image.fromarray(seq.frames[t]).save(os.path.join(img_dir, stem + ".jpg"), quality=95)
            Image.fromarray(lut[seq.labels[t]], mode="L").save(os.path.join(seg_dir, stem + ".png"))
        names.append(name)
    return names
