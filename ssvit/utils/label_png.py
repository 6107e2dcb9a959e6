"""Label maps as indexed PNGs: the DAVIS and I-PACE palettes, the I-PACE class colours, reading and
(atomically) writing P-mode label PNGs. Used by the synthetic sequence generator and the
segmentation evaluations.

Palettes: DAVIS's (the UVC ``palette.txt`` the original downloads: VOC's bit-interleaved colours for
0-21 with 191 where VOC has 192, then grey ``i i i``) and the I-PACE fork's 27 class colours then grey.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

IPACE_COLOURS = ((220, 20, 60), (255, 0, 0), (165, 42, 42), (0, 0, 142), (0, 0, 142), (0, 60, 100), (0, 0, 230),
                 (119, 11, 32), (220, 220, 0), (250, 170, 30), (128, 64, 128), (244, 35, 232), (196, 196, 196),
                 (250, 170, 160), (170, 170, 170), (140, 140, 200), (255, 255, 255), (128, 64, 255), (70, 70, 70),
                 (197, 231, 158), (190, 153, 153), (255, 255, 128), (107, 142, 35), (64, 170, 64), (70, 130, 180),
                 (78, 99, 171), (0, 0, 0))
IPACE_NUM_CLASSES = len(IPACE_COLOURS)  # 27
IGNORE = 255


def davis_palette() -> np.ndarray:
    """(256, 3) uint8: VOC's bit-interleaved colours for ids 0..21 (192 written as 191, as UVC's file),
    grey (i, i, i) from 22 on."""
    pal = np.zeros((256, 3), dtype=np.int64)
    for i in range(256):
        if i >= 22:
            pal[i] = i
            continue
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        pal[i] = rgb
    pal[pal == 192] = 191
    return pal.astype(np.uint8)


def ipace_palette() -> np.ndarray:
    """(256, 3) uint8: the 27 I-PACE class colours, then grey (i, i, i) for 27..255."""
    grey = np.tile(np.arange(IPACE_NUM_CLASSES, 256)[:, None], 3)
    return np.vstack([np.array(IPACE_COLOURS), grey]).astype(np.uint8)


def imwrite_indexed(path: str, labels: np.ndarray, palette: np.ndarray) -> None:
    """Save (H, W) uint8 ids as a P-mode PNG with ``palette`` (256 x 3), atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"an indexed PNG needs a 2-D label array, got shape {labels.shape}")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(palette.astype(np.uint8).ravel().tolist())
    tmp = path + ".tmp"
    im.save(tmp, format="PNG")
    os.replace(tmp, path)


def read_labels(path: str) -> np.ndarray:
    """(H, W) uint8 class ids of a label PNG (P or L mode)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label map not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: expected a single-channel (P or L mode) label PNG, got mode {im.mode}")
        return np.asarray(im).astype(np.uint8)
