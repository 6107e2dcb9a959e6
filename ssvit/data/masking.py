"""Patch masks for masked image modelling: iBOT's block-wise / random mask generator.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer" (ICLR 2022), bytedance/ibot
``loader.py`` (``ImageFolderMask``), whose block masks follow BEiT's masking generator. Same draws
from the same generators as the original: Python ``random`` for ratios and blocks, NumPy for
``'rand'`` masks.
"""
from __future__ import annotations

import math
import random
from typing import Sequence, Union

import numpy as np

Ratio = Union[float, Sequence[float]]


class MaskGenerator:
    """Draws one boolean mask (H, W) per crop; True = patch replaced by the mask token.

    Args (the original's): ``pred_ratio`` mean masking ratio, a float or a list (one of the list's
    draws is picked per crop); ``pred_ratio_var`` half-width of the uniform draw around each ratio
    (a float is broadcast to the list); ``pred_aspect_ratio`` (min, max) aspect of a block;
    ``pred_shape`` ``'block'`` or ``'rand'``; ``pred_start_epoch`` no masking before that epoch.
    """

    def __init__(self, pred_ratio: Ratio = 0.3, pred_ratio_var: Ratio = 0.0,
                 pred_aspect_ratio: Sequence[float] = (0.3, 1 / 0.3), pred_shape: str = "block",
                 pred_start_epoch: int = 0):
        if isinstance(pred_ratio, (list, tuple)) and len(pred_ratio) == 1:
            pred_ratio = pred_ratio[0]
        if isinstance(pred_ratio_var, (list, tuple)) and len(pred_ratio_var) == 1:
            pred_ratio_var = pred_ratio_var[0]
        if isinstance(pred_ratio, (list, tuple)):
            pred_ratio = [float(r) for r in pred_ratio]
            if not isinstance(pred_ratio_var, (list, tuple)):
                pred_ratio_var = [float(pred_ratio_var)] * len(pred_ratio)
            pred_ratio_var = [float(v) for v in pred_ratio_var]
            if len(pred_ratio_var) != len(pred_ratio):
                raise ValueError(f"--pred_ratio_var needs one value or {len(pred_ratio)} (one per --pred_ratio), "
                                 f"got {len(pred_ratio_var)}")
            pairs = list(zip(pred_ratio, pred_ratio_var))
        else:
            if isinstance(pred_ratio_var, (list, tuple)):
                raise ValueError("--pred_ratio_var has several values but --pred_ratio only one")
            pred_ratio, pred_ratio_var = float(pred_ratio), float(pred_ratio_var)
            pairs = [(pred_ratio, pred_ratio_var)]
        for m, v in pairs:
            if not (0.0 <= m <= 1.0) or v < 0 or m < v or m + v > 1.0:
                raise ValueError(f"masking ratio {m} +- {v} must satisfy 0 <= ratio - var and ratio + var <= 1")
        if pred_shape not in ("block", "rand"):
            raise ValueError(f"--pred_shape must be 'block' or 'rand', got {pred_shape!r}")
        self.pred_ratio, self.pred_ratio_var = pred_ratio, pred_ratio_var
        self.log_aspect_ratio = tuple(math.log(x) for x in pred_aspect_ratio)
        self.pred_shape = pred_shape
        self.pred_start_epoch = pred_start_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def get_pred_ratio(self) -> float:
        if self.epoch < self.pred_start_epoch:
            return 0.0
        if isinstance(self.pred_ratio, list):
            draws = [random.uniform(m - v, m + v) if v > 0 else m
                     for m, v in zip(self.pred_ratio, self.pred_ratio_var)]
            return random.choice(draws)
        m, v = self.pred_ratio, self.pred_ratio_var
        return random.uniform(m - v, m + v) if v > 0 else m

    def __call__(self, H: int, W: int) -> np.ndarray:
        high = self.get_pred_ratio() * H * W
        if self.pred_shape == "rand":
            mask = np.hstack([np.zeros(H * W - int(high)), np.ones(int(high))]).astype(bool)
            np.random.shuffle(mask)
            return mask.reshape(H, W)
        return self.block_mask(H, W, high)

    def block_mask(self, H: int, W: int, high: float) -> np.ndarray:
        """BEiT-style: add random rectangles until ``high`` patches are masked (or no block fits)."""
        mask = np.zeros((H, W), dtype=bool)
        mask_count = 0
        while mask_count < high:
            max_mask_patches = high - mask_count
            delta = 0
            for _ in range(10):
                low = (min(H, W) // 3) ** 2
                target_area = random.uniform(low, max_mask_patches)
                aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
                h = int(round(math.sqrt(target_area * aspect_ratio)))
                w = int(round(math.sqrt(target_area / aspect_ratio)))
                if w < W and h < H:
                    top = random.randint(0, H - h)
                    left = random.randint(0, W - w)
                    num_masked = mask[top: top + h, left: left + w].sum()
                    if 0 < h * w - num_masked <= max_mask_patches:
                        box = mask[top: top + h, left: left + w]
                        delta += int((~box).sum())
                        box[...] = True
                if delta > 0:
                    break
            if delta == 0:
                break
            mask_count += delta
        return mask

    def __repr__(self) -> str:
        return (f"MaskGenerator(pred_ratio={self.pred_ratio}, pred_ratio_var={self.pred_ratio_var}, "
                f"pred_shape={self.pred_shape!r}, pred_start_epoch={self.pred_start_epoch})")


class MaskedCrops:
    """Wraps a multi-crop transform: returns ``(crops, masks)`` with one mask per global crop
    (or, when the transform returns a dict with ``crops``, that dict plus ``masks``).

    ``crops`` is the wrapped transform's list; ``masks[i]`` is a bool array (H_i/p, W_i/p) for crop
    ``i < n_global`` (``patch_size`` p in pixels; iBOT passes 8x the patch size for Swin). The
    original also draws masks for local crops, which nothing reads; they are not drawn here
    (the global masks are drawn first either way, so they are the same draws).
    """

    def __init__(self, transform, generator: MaskGenerator, patch_size: int, n_global: int = 2):
        self.transform, self.generator = transform, generator
        self.patch_size, self.n_global = patch_size, n_global

    def set_epoch(self, epoch: int) -> None:
        self.generator.set_epoch(epoch)

    def __call__(self, img):
        out = self.transform(img)
        crops = out["crops"] if isinstance(out, dict) else out
        masks = [self.generator(c.shape[-2] // self.patch_size, c.shape[-1] // self.patch_size)
                 for c in crops[: self.n_global]]
        if isinstance(out, dict):  # e.g. SERE's crops + overlap grids
            return {**out, "masks": masks}
        return crops, masks
