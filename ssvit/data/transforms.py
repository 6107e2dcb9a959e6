"""Augmentations of the DINO family (facebookresearch/dino ``main_dino.py`` / ``utils.py``)."""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL Gaussian blur with probability ``p`` (note ``<=``: p=1 always blurs) and radius U(0.1, 2)."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() <= self.prob:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))
        return img

    def __repr__(self) -> str:
        return f"GaussianBlur(p={self.prob})"


class Solarization:
    """PIL solarisation (threshold 128) with probability ``p``."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f"Solarization(p={self.p})"


class ToTensorNormalize:
    """``Compose([ToTensor(), Normalize(mean, std)])``, bit-identical, ~4x faster on small images.

    8-bit RGB / L PIL images take a direct NumPy path (the same float32 ops: /255, -mean, /std);
    any other input falls back to torchvision. Output (C, H, W) float32.

    A grey 'L' image with a 3-channel mean/std is expanded to 3 equal channels first: exactly what
    ``img.convert("RGB")`` then ToTensor + Normalize gives. Grey datasets (Fashion-MNIST) stay
    single-channel through the augmentations, which is bit-identical and ~2x cheaper (tested).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean_seq, self.std_seq = tuple(mean), tuple(std)
        self.mean = torch.tensor(self.mean_seq, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(self.std_seq, dtype=torch.float32).view(-1, 1, 1)
        self.fallback = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, Image.Image) and img.mode in ("RGB", "L"):
            a = np.asarray(img)
            t = torch.from_numpy(a.reshape(a.shape[0], a.shape[1], -1).transpose(2, 0, 1).copy())
            if t.shape[0] == 1 and len(self.mean_seq) == 3:
                t = t.expand(3, -1, -1)
            if t.shape[0] == len(self.mean_seq):
                return t.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)
        if isinstance(img, Image.Image) and img.mode == "L" and len(self.mean_seq) == 3:
            img = img.convert("RGB")
        return self.fallback(img)

    def __repr__(self) -> str:
        return f"ToTensorNormalize(mean={self.mean_seq}, std={self.std_seq})"


def normalize_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    return ToTensorNormalize(mean, std)


def central_crop_box(height: int, width: int, ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """``RandomResizedCrop``'s fallback when no random try fits: the whole image with its aspect ratio
    clamped to ``ratio``, centred; (top, left, h, w)."""
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def color_distortion() -> list:
    """DINO's colour steps: jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, then grayscale with p=0.2."""
    return [
        transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]


def flip_and_color_jitter():
    return transforms.Compose([transforms.RandomHorizontalFlip(p=0.5), *color_distortion()])


def blur_radii(global_crops_size: int) -> dict:
    """GaussianBlur radius range U(0.1, 2) px, scaled by ``global_crops_size / 224``."""
    r = global_crops_size / 224.0
    return dict(radius_min=0.1 * r, radius_max=2.0 * r)


class DataAugmentationDINO:
    """DINO multi-crop: 2 global crops then ``local_crops_number`` local crops.

    Returns a list of tensors ``[g1 (3,G,G), g2 (3,G,G), l_1 (3,L,L), ...]`` with
    G = ``global_crops_size`` (224 in the original) and L = ``local_crops_size`` (96).
    g1: blur p=1; g2: blur p=0.1 + solarise p=0.2; locals: blur p=0.5 -- as the original.

    Blur radii (U(0.1, 2) px in the original, tuned for 224-px crops) are scaled by
    ``global_crops_size / 224``: identical to the original at its sizes, and proportionate on
    small images (a 2-px blur would wipe out a 28-px Fashion-MNIST crop).
    """

    def __init__(self, global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4), local_crops_number: int = 8,
                 global_crops_size: int = 224, local_crops_size: int = 96,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        bicubic = transforms.InterpolationMode.BICUBIC
        fcj = flip_and_color_jitter()
        blur = blur_radii(global_crops_size)
        norm = normalize_transform(mean, std)
        self.global_transfo1 = transforms.Compose([
            transforms.RandomResizedCrop(global_crops_size, scale=tuple(global_crops_scale), interpolation=bicubic),
            fcj, GaussianBlur(1.0, **blur), norm])
        self.global_transfo2 = transforms.Compose([
            transforms.RandomResizedCrop(global_crops_size, scale=tuple(global_crops_scale), interpolation=bicubic),
            fcj, GaussianBlur(0.1, **blur), Solarization(0.2), norm])
        self.local_crops_number = local_crops_number
        self._local_parts = (tuple(local_crops_scale), fcj, blur, norm)
        self.local_transfo = self.local_transform(local_crops_size)

    def local_transform(self, size: int):
        """DINO's local-crop pipeline at ``size`` px (blur p=0.5, radii scaled by the global size)."""
        scale, fcj, blur, norm = self._local_parts
        return transforms.Compose([
            transforms.RandomResizedCrop(size, scale=scale, interpolation=transforms.InterpolationMode.BICUBIC),
            fcj, GaussianBlur(p=0.5, **blur), norm])

    def __call__(self, image: Image.Image):
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops.extend(self.local_transfo(image) for _ in range(self.local_crops_number))
        return crops


class DataAugmentationiBOT(DataAugmentationDINO):
    """iBOT multi-crop (bytedance/ibot ``main_ibot.py``): crop 1 uses DINO's g1 pipeline, crops
    2..``global_crops_number`` g2's, then ``local_crops_number`` DINO local crops.
    Returns ``[g_1, ..., g_G, l_1, ..., l_L]`` tensors (3, G, G) / (3, L, L).
    """

    def __init__(self, global_crops_scale=(0.14, 1.0), local_crops_scale=(0.05, 0.4), global_crops_number: int = 2,
                 local_crops_number: int = 0, global_crops_size: int = 224, local_crops_size: int = 96,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__(global_crops_scale, local_crops_scale, local_crops_number, global_crops_size,
                         local_crops_size, mean, std)
        self.global_crops_number = global_crops_number

    def __call__(self, image: Image.Image):
        crops = [self.global_transfo1(image)]
        crops.extend(self.global_transfo2(image) for _ in range(self.global_crops_number - 1))
        crops.extend(self.local_transfo(image) for _ in range(self.local_crops_number))
        return crops


def eval_transform(resize: int = 256, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD):
    """k-NN / linear evaluation preprocessing: Resize(256, bicubic), CenterCrop(224), normalise."""
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        normalize_transform(mean, std),
    ])
