"""Frames, label maps and palettes of the segmentation-propagation evaluations (DAVIS-2017 as DINO's
``eval_video_segmentation.py``; I-PACE as anthonyhu/dino's ``cleanup`` branch).

Frames: decoded with PIL (libjpeg, as OpenCV), RGB, /255, normalised with the originals' constants --
mean (0.485, 0.456, 0.406), **std (0.228, 0.224, 0.225)** (QUIRK: 0.228, not 0.229). DAVIS resizes the
short side to 480 and floors the long side to a multiple of 64 (854 x 480 -> 832 x 480), bilinear
without antialiasing on the uint8 image, rounded back to uint8, as ``cv2.resize`` does (cv2's 11-bit
fixed-point weights can differ by one grey level); I-PACE keeps the native size.

Labels: DAVIS annotations are resized with PIL NEAREST to the feature grid and one-hot encoded over
``max + 1`` channels. Difference (documented): for a square frame the original's ``read_seg`` swaps the
grid (30 x 28 labels against 28 x 30 features, silently scrambled); ssvit uses the frame's rule for
both. I-PACE labels are downsampled with torch ``nearest`` to (H // p, W // p) (the top-left pixel of
each cell) and one-hot encoded over 256 channels (255 = ignore is a class that propagates).

Palettes: DAVIS's (the UVC ``palette.txt`` the original downloads: VOC's bit-interleaved colours for
0-21 with 191 where VOC has 192, then grey ``i i i``) and the I-PACE fork's 27 class colours then grey.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .label_propagation import to_one_hot

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)  # the originals' color_normalize (QUIRK)

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


def davis_size(h: int, w: int, short: int = 480) -> tuple[int, int]:
    """The original's ``read_frame`` target (th, tw): short side ``short``, long side floored to x64."""
    if h > w:
        return int(((short * h) / w // 64) * 64), short
    return short, int(((short * w) / h // 64) * 64)


def _load_rgb(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frame not found: {path}")
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def resize_uint8_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (th, tw, 3) uint8: bilinear, half-pixel centres, no antialiasing, rounded
    (``cv2.resize(img, (tw, th))``'s INTER_LINEAR)."""
    if tuple(img.shape[:2]) == tuple(size):
        return img
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).float()
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
    return t.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def normalise(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 ``(x / 255 - MEAN) / STD``."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def read_frame(path: str, resize: bool = True) -> tuple[torch.Tensor, int, int]:
    """(normalised (3, th, tw) frame, original h, original w); ``resize=False`` keeps the native size."""
    img = _load_rgb(path)
    h, w = img.shape[:2]
    if resize:
        img = resize_uint8_bilinear(img, davis_size(h, w))
    return normalise(img), h, w


def read_labels(path: str) -> np.ndarray:
    """(H, W) uint8 class ids of a label PNG (P or L mode)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label map not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: expected a single-channel (P or L mode) label PNG, got mode {im.mode}")
        return np.asarray(im).astype(np.uint8)


def read_seg_davis(path: str, patch_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(one-hot (1, max + 1, th/p, tw/p) at the frame's DAVIS size, the original (H, W) labels)."""
    labels = read_labels(path)
    h, w = labels.shape
    th, tw = davis_size(h, w)
    small = np.asarray(Image.fromarray(labels).resize((tw // patch_size, th // patch_size), Image.NEAREST))
    return to_one_hot(torch.from_numpy(small.copy()).unsqueeze(0)), labels


def read_seg_nearest(path: str, patch_size: int, n_dims: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """(one-hot (1, n_dims, H // p, W // p) by torch ``nearest``, the original (H, W) labels) -- ``cleanup``."""
    labels = read_labels(path)
    h, w = labels.shape
    t = torch.from_numpy(labels.copy()).float().view(1, 1, h, w)
    small = F.interpolate(t, size=(h // patch_size, w // patch_size), mode="nearest")[0]
    return to_one_hot(small, n_dims=n_dims), labels


def list_frames(folder: str, ext: str = ".jpg") -> list[str]:
    """Sorted ``*.jpg`` paths of a folder (an error when there are none)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"frame folder not found: {folder}")
    frames = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(ext))
    if not frames:
        raise FileNotFoundError(f"no {ext} frames in {folder}")
    return frames


def pil_nearest_resize(labels: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """PIL NEAREST resize of a uint8 label map to (width, height) (a no-op at the same size)."""
    if labels.shape[::-1] == tuple(size_wh):
        return labels
    return np.asarray(Image.fromarray(labels).resize(size_wh, Image.NEAREST))


def frame_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def check_grid(seg: torch.Tensor, h: int, w: int, where: Optional[str] = None) -> None:
    if tuple(seg.shape[-2:]) != (h, w):
        raise ValueError(f"{where or 'labels'}: label grid {tuple(seg.shape[-2:])} != feature grid {(h, w)}")
