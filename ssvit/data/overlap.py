"""Multi-crop augmentation that records where each crop came from, for SERE's overlap alignment.

MCG-NKU/SERE ``transforms_overlap.py`` and ``DataAugmentationiBOT`` (``main_sere.py``): the crop and
flip steps also return the crop box ``[x0, y0, w, h]`` in source pixels and the flip flag, and
``get_grid`` turns two boxes into ``grid_sample`` grids over their overlap. Crop and flip draw from
Python ``random`` as the original (DINO's plain transforms use the torch generator).
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from .transforms import (IMAGENET_MEAN, IMAGENET_STD, GaussianBlur, Solarization, blur_radii, central_crop_box,
                         color_distortion, normalize_transform)


class RandomResizedCropOverLap:
    """RandomResizedCrop (10 attempts, then the centre fallback) returning ``(img, [x0, y0, w, h])``."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                 interpolation=transforms.InterpolationMode.BICUBIC):
        self.size = (size, size)
        self.scale, self.ratio, self.interpolation = tuple(scale), tuple(ratio), interpolation

    @staticmethod
    def get_params(img: Image.Image, scale, ratio) -> tuple[int, int, int, int]:
        width, height = img.size
        area = height * width
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target_area = random.uniform(*scale) * area
            aspect_ratio = math.exp(random.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        return central_crop_box(height, width, ratio)

    def __call__(self, img: Image.Image):
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        return TF.resized_crop(img, i, j, h, w, list(self.size), self.interpolation), [j, i, w, h]


class OverlapCropPipeline:
    """crop (box) -> flip p=0.5 (flag) -> colour jitter p=0.8 -> grayscale p=0.2 -> ``rest`` ->
    normalise. Returns ``(tensor (3, S, S), box [x0, y0, w, h, flip])``."""

    def __init__(self, size: int, scale, rest: Sequence, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.crop = RandomResizedCropOverLap(size, scale=scale)
        self.jitter = transforms.Compose([*color_distortion(), *rest, normalize_transform(mean, std)])

    def __call__(self, img: Image.Image):
        img, box = self.crop(img)
        if random.random() < 0.5:
            img, flip = TF.hflip(img), 1
        else:
            flip = 0
        return self.jitter(img), box + [flip]


def get_grid(rectq: Sequence[float], rectk: Sequence[float], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``grid_sample`` grids (size, size, 2) covering the overlap of boxes ``rectq`` and ``rectk``
    (each ``[x0, y0, w, h, flip]``) in the coordinates of each crop, flipped like the crop, scaled
    to [-1, 1]; both filled with -2 (sampling only zero padding) when the boxes do not overlap."""
    n = float(size - 1)
    ox0, oy0 = max(rectq[0], rectk[0]), max(rectq[1], rectk[1])
    ox1, oy1 = min(rectq[0] + rectq[2], rectk[0] + rectk[2]), min(rectq[1] + rectq[3], rectk[1] + rectk[3])
    if not (ox0 < ox1 and oy0 < oy1):
        return torch.full((size, size, 2), -2.0), torch.full((size, size, 2), -2.0)
    grids = []
    for rect in (rectq, rectk):
        rel = torch.tensor([(ox0 - rect[0]) / rect[2], (oy0 - rect[1]) / rect[3],
                            (ox1 - ox0) / rect[2], (oy1 - oy0) / rect[3]], dtype=torch.float32)
        grid = torch.zeros(size, size, 2, dtype=torch.float32)
        grid[:, :, 0] = torch.tensor([float(rel[0] + i * rel[2] / n) for i in range(size)],
                                     dtype=torch.float32).view(1, size)
        grid[:, :, 1] = torch.tensor([float(rel[1] + i * rel[3] / n) for i in range(size)],
                                     dtype=torch.float32).view(size, 1)
        if rect[4] > 0:
            grid[:, :, 0] = 1 - grid[:, :, 0]
        grids.append(2 * grid - 1)
    return grids[0], grids[1]


class DataAugmentationOverlap:
    """SERE's multi-crop (its ``DataAugmentationiBOT``): iBOT's / DINO's crop pipelines (g1: blur
    p=1; g2..gG: blur p=0.1 + solarise p=0.2; locals: blur p=0.5) with box tracking, plus grids.

    Returns a dict: ``crops`` [g_1..g_G, l_1..l_L]; ``grid1`` / ``grid2`` = (q, k) grids of the
    g1/g2 overlap at ``overlap_size[0]`` / ``overlap_size[1]``; ``grid_local`` / ``grid_global``
    lists of 2L grids of size ``local_grid_size`` (6 in the original), index ``iq * L + v`` = local
    crop v against global crop iq (0 = g1, 1 = g2), in local- resp. global-crop coordinates.
    Blur radii scale with ``global_crops_size / 224`` as in ``DataAugmentationDINO``.
    """

    def __init__(self, global_crops_scale=(0.14, 1.0), local_crops_scale=(0.05, 0.4), global_crops_number: int = 2,
                 local_crops_number: int = 0, overlap_size: Sequence[int] = (13, 13), global_crops_size: int = 224,
                 local_crops_size: int = 96, local_grid_size: int = 6, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if global_crops_number != 2:
            raise ValueError("SERE aligns exactly 2 global crops (--global_crops_number 2)")
        if len(overlap_size) == 1:
            overlap_size = (overlap_size[0], overlap_size[0])
        blur = blur_radii(global_crops_size)
        self.global_transfo1 = OverlapCropPipeline(global_crops_size, global_crops_scale, [GaussianBlur(1.0, **blur)],
                                                   mean, std)
        self.global_transfo2 = OverlapCropPipeline(global_crops_size, global_crops_scale,
                                                   [GaussianBlur(0.1, **blur), Solarization(0.2)], mean, std)
        self.local_transfo = OverlapCropPipeline(local_crops_size, local_crops_scale, [GaussianBlur(p=0.5, **blur)],
                                                 mean, std)
        self.global_crops_number, self.local_crops_number = global_crops_number, local_crops_number
        self.overlap_size, self.local_grid_size = tuple(overlap_size), local_grid_size

    def __call__(self, image: Image.Image) -> dict:
        g1, box1 = self.global_transfo1(image)
        g2, box2 = self.global_transfo2(image)
        locals_ = [self.local_transfo(image) for _ in range(self.local_crops_number)]
        out = {"crops": [g1, g2] + [c for c, _ in locals_],
               "grid1": list(get_grid(box1, box2, self.overlap_size[0])),
               "grid2": list(get_grid(box1, box2, self.overlap_size[1]))}
        if self.local_crops_number:
            grid_local, grid_global = [], []
            for gbox in (box1, box2):
                for _, lbox in locals_:
                    gl, gg = get_grid(lbox, gbox, self.local_grid_size)
                    grid_local.append(gl)
                    grid_global.append(gg)
            out["grid_local"], out["grid_global"] = grid_local, grid_global
        return out
