"""Frames, label maps and palettes of the segmentation-propagation evaluations (DAVIS-2017 as DINO's
``eval_video_segmentation.py``; I-PACE as anthonyhu/dino's ``cleanup`` branch).

Frames: decoded with PIL (libjpeg, as OpenCV), RGB, /255, normalised with the originals' constants --
mean (0.485, 0.456, 0.406), **std (0.228, 0.224, 0.225)** (QUIRK: 0.228, not 0.229). DAVIS resizes the
short side to 480 and floors the long side to a multiple of 64 (854 x 480 -> 832 x 480) with
``cv2.resize``'s fixed-point bilinear arithmetic on the uint8 image (bit-exact when shrinking); I-PACE
keeps the native size. PIL's JPEG decoding equals ``cv2.imread``'s (measured: identical pixels).

Labels: DAVIS annotations are resized with PIL NEAREST to the feature grid and one-hot encoded over
``max + 1`` channels. Difference (documented): for a square frame the original's ``read_seg`` swaps the
grid (30 x 28 labels against 28 x 30 features, silently scrambled); ssvit uses the frame's rule for
both. I-PACE labels are downsampled with torch ``nearest`` to (H // p, W // p) (the top-left pixel of
each cell) and one-hot encoded over 256 channels (255 = ignore is a class that propagates).


Palettes, class colours and indexed-PNG IO: ``ssvit.utils.label_png``.
"""
from __future__ import annotations

import os
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils.label_png import read_labels
from .label_propagation import to_one_hot

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)  # the originals' color_normalize (QUIRK)

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


def _linear_taps(dst: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: source indices (i0, i1) and 11-bit weights (w0, w1),
    the position ``(d + 0.5) * src / dst - 0.5`` in float32, each weight rounded on its own."""
    pos = ((np.arange(dst) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    low, high = i0 < 0, i0 >= src - 1
    frac[low | high] = 0
    i0[low], i0[high] = 0, src - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int64)
    return i0, np.minimum(i0 + 1, src - 1), w0, w1


def resize_uint8_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (th, tw, C) uint8 as ``cv2.resize(img, (tw, th))`` (INTER_LINEAR) computes it: 11-bit
    fixed-point weights, a horizontal then a vertical pass, OpenCV's vectorised rounding. Measured against
    OpenCV 5.1.0: bit-exact when shrinking (every DAVIS frame), one level off on ~0.03 % of the values when
    enlarging."""
    th, tw = size
    if tuple(img.shape[:2]) == (th, tw):
        return img
    x0, x1, a0, a1 = _linear_taps(tw, img.shape[1])
    y0, y1, b0, b1 = _linear_taps(th, img.shape[0])
    src = img.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]  # x 2048
    out = (((b0[:, None, None] * (rows[y0] >> 4)) >> 16) + ((b1[:, None, None] * (rows[y1] >> 4)) >> 16) + 2) >> 2
    return out.clip(0, 255).astype(np.uint8)


def normalise(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 ``(x / 255 - MEAN) / STD``."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def read_frame(path: str, resize: bool = True, short: int = 480) -> tuple[torch.Tensor, int, int]:
    """(normalised (3, th, tw) frame, original h, original w); ``resize=False`` keeps the native size."""
    img = _load_rgb(path)
    h, w = img.shape[:2]
    if resize:
        img = resize_uint8_bilinear(img, davis_size(h, w, short))
    return normalise(img), h, w


def read_seg_davis(path: str, patch_size: int, short: int = 480) -> tuple[torch.Tensor, np.ndarray]:
    """(one-hot (1, max + 1, th/p, tw/p) at the frame's DAVIS size, the original (H, W) labels)."""
    labels = read_labels(path)
    h, w = labels.shape
    th, tw = davis_size(h, w, short)
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

