"""The un-augmented view of an image, appended to a multi-crop batch for an asymmetric teacher
(``--teacher_views clean``): the teacher labels the image as evaluation sees it while the student
sees DINO's augmented crops.

The view is evaluation's preprocessing at the global crop size: shorter side resized to ``size``
(bicubic), centre crop ``size`` x ``size``, normalised like the crops -- on a Fashion-MNIST image
(28 px, ``size`` 28) the image itself, normalised. Both the per-image (PIL) and the per-batch
(tensor) forms append it as the last entry of the crop list: ``[g1, g2, l_1, ..., l_L, clean]``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision import transforms
from torchvision.transforms.v2 import functional as TF

from .batched_multicrop import normalize_batch
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_transform


def clean_view_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> Callable:
    """PIL image -> (3, size, size) float32: Resize(size, bicubic), CenterCrop(size), normalise."""
    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        normalize_transform(mean, std),
    ])


def clean_view_batch(images: torch.Tensor, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (N, 1 or 3, H, W) -> (N, 3, size, size) float32, the batched ``clean_view_transform``,
    normalised as the batched crops (the same float ops as the per-image normalisation:
    bit-identical when no resize is needed)."""
    if images.shape[-2:] != (size, size):
        images = TF.center_crop(TF.resize(images, [size], interpolation=TF.InterpolationMode.BICUBIC,
                                          antialias=True), [size, size])
    return normalize_batch(images.to(torch.float32).div_(255), mean, std)


class WithCleanView:
    """Per-image multi-crop ``transform`` -> its crop list + ``[clean view]``."""

    def __init__(self, transform: Callable, size: int):
        self.transform, self.clean = transform, clean_view_transform(size)

    def __call__(self, image):
        return list(self.transform(image)) + [self.clean(image)]

    def __repr__(self) -> str:
        return f"WithCleanView({self.transform!r})"


class BatchedWithCleanView:
    """Per-batch multi-crop ``transform(images, generator)`` -> its crop list + ``[clean view]``
    (no random draws: the generator's stream is the wrapped transform's alone)."""

    def __init__(self, transform: Callable, size: int):
        self.transform, self.size = transform, size

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        return list(self.transform(images, gen)) + [clean_view_batch(images, self.size)]

    def __repr__(self) -> str:
        return f"BatchedWithCleanView({self.transform!r})"
