"""DINO's multi-crop augmentation on a whole batch of tensors at once (``--augmentation batched``).

The per-image PIL pipeline (``DataAugmentationDINO``) costs ~1.2 ms per image at 28 px on this CPU --
a third of a Fashion-MNIST training step at patch 7 -- because each of the 4 crops of each image is a
dozen PIL / torchvision calls. ``BatchedMultiCrop`` applies the same family of transforms to a batch
(N, C, H, W) of equal-size images with a few tensor ops per crop, on whatever device the batch is:

- RandomResizedCrop: torchvision's sampling (10 tries of area ~ U(scale) x H W and log-uniform aspect
  ratio in (3/4, 4/3), rounded sides, else the centre crop with the ratio clamped), resampled by
  ``grid_sample`` in bicubic mode (DINO's interpolation) with torchvision's pixel-centre convention;
  no antialiasing when a crop is shrunk (the Fashion-MNIST crops are mostly enlarged);
- horizontal flip p=0.5 (folded into the same sampling grid);
- ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8 in a random order per image (``batched_color``: the
  formulas of torchvision's tensor ops), RandomGrayscale p=0.2;
- Gaussian blur with sigma ~ U(radius_min, radius_max) (PIL's ``GaussianBlur(radius)`` is a Gaussian of
  standard deviation ``radius``), reflect padding: p=1 for the first global crop, 0.1 for the second,
  0.5 for local crops; solarisation (pixels >= 128/255 inverted) p=0.2 on the second global crop;
- ToTensor + Normalize (ImageNet statistics); one-channel images are expanded to 3 channels first.

It is the same augmentation *distribution* as the original's, not the same pixels: the arithmetic
stays in float (PIL rounds to uint8 after every step) and the interpolation kernels differ in detail.
Runs that need the original's crops bit for bit keep ``--augmentation pil`` (the default).

The random draws come from a ``torch.Generator`` the caller seeds per (seed, epoch, iteration, rank),
so a resumed run draws the same crops as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import pil_to_tensor

from . import batched_color
from .transforms import IMAGENET_MEAN, IMAGENET_STD, blur_radii, central_crop_box


def image_to_uint8_tensor(img) -> torch.Tensor:
    """PIL image -> (C, H, W) uint8 tensor, its pixels unchanged (the per-image half of ``--augmentation
    batched``: the loader only stacks images; BatchedMultiCrop makes the crops)."""
    return pil_to_tensor(img)


def _uniform(gen: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


def random_resized_crop_boxes(n: int, height: int, width: int, scale: Sequence[float], gen: torch.Generator,
                              ratio: Sequence[float] = (3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """``RandomResizedCrop.get_params`` for ``n`` images at once: (n, 4) int64 rows (top, left, h, w).

    Each image gets ``tries`` candidates (area fraction ~ U(scale), log aspect ratio ~ U(log ratio));
    the first whose rounded sides fit is taken, at a uniform position; an image with none fitting gets
    the centre crop with its aspect ratio clamped to ``ratio``, as torchvision.
    """
    area = height * width
    target = area * _uniform(gen, (n, tries), scale[0], scale[1])
    aspect = torch.exp(_uniform(gen, (n, tries), math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(1)  # index of the first fitting try (0 when none fits)
    rows = torch.arange(n)
    h, w, found = h[rows, first], w[rows, first], fits[rows, first]
    pos = torch.rand((n, 2), generator=gen, dtype=torch.float64)
    top = torch.floor(pos[:, 0] * (height - h + 1).double()).long()
    left = torch.floor(pos[:, 1] * (width - w + 1).double()).long()
    if not bool(found.all()):  # torchvision's fallback: the whole image, ratio clamped, centred
        miss = ~found
        top[miss], left[miss], h[miss], w[miss] = central_crop_box(height, width, ratio)
    return torch.stack((top, left, h, w), 1)


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Image n's box (top, left, h, w) resampled to ``size`` x ``size`` (bicubic, torchvision's pixel
    centres: output pixel u reads input x = left + (u + 0.5) w / size - 0.5), mirrored where ``flip[n]``.
    images float (N, C, H, W); the result is clamped to [0, 1] (bicubic overshoots)."""
    n, c, height, width = images.shape
    b = boxes.to(torch.float64)
    top, left, h, w = b.unbind(1)
    sx = w / width * torch.where(flip, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta.to(device=images.device, dtype=images.dtype), [n, c, size, size],
                         align_corners=False)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one standard deviation per image (``sigma`` (N,), 0 = unchanged),
    kernel half-width ceil(3 max sigma), reflect padding."""
    n, c, height, width = images.shape
    radius = int(math.ceil(3 * float(sigma.max()))) if sigma.numel() else 0
    radius = min(radius, height - 1, width - 1)
    if radius <= 0:
        return images
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigma.to(torch.float64).clamp_min(1e-12).view(n, 1)
    k = torch.exp(-0.5 * (x / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # sigma ~ 0 -> a unit impulse
    k = k.to(device=images.device, dtype=images.dtype).repeat_interleave(c, 0)  # (N*C, K)
    flat = F.pad(images.reshape(1, n * c, height, width), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, height, width)


def solarize(images: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.solarize`` (threshold 128) in [0, 1]: pixels >= 128/255 of the selected images
    (``selected`` (N,) bool) become 1 - x."""
    sel = selected.to(images.device).view(-1, *([1] * (images.dim() - 1)))
    return torch.where(sel & (images >= 128 / 255), 1.0 - images, images)


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 1 or 3, H, W) in [0, 1] -> (N, 3, H, W) ``(x - mean) / std``, grey expanded to 3 channels."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


class BatchedMultiCrop:
    """DINO multi-crop on a batch: ``images`` uint8 or float in [0, 1], (N, C, H, W) with C = 1 or 3
    -> ``[g1, g2, l_1, ..., l_L]``, each (N, 3, S, S) normalised float32, S = ``global_crops_size`` for
    the two global crops and ``local_crops_size`` for the ``local_crops_number`` local ones -- the layout
    a DataLoader gives for ``DataAugmentationDINO``.

    Blur radii are scaled by ``global_crops_size / 224`` as in ``DataAugmentationDINO``.
    """

    jitter = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (DINO's ColorJitter)

    def __init__(self, global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4), local_crops_number: int = 8,
                 global_crops_size: int = 224, local_crops_size: int = 96,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.global_crops_scale, self.local_crops_scale = tuple(global_crops_scale), tuple(local_crops_scale)
        self.local_crops_number = local_crops_number
        self.global_crops_size, self.local_crops_size = global_crops_size, local_crops_size
        radii = blur_radii(global_crops_size)
        self.blur_range = (radii["radius_min"], radii["radius_max"])
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        return (f"BatchedMultiCrop(global {self.global_crops_size} px {self.global_crops_scale}, "
                f"{self.local_crops_number} local {self.local_crops_size} px {self.local_crops_scale})")

    def color(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """RandomApply(ColorJitter, p=0.8) then RandomGrayscale(p=0.2), parameters per image."""
        n = x.shape[0]
        applied = torch.rand(n, generator=gen) < 0.8
        order = torch.argsort(torch.rand((n, 4), generator=gen), dim=1)
        b, c, s, h = self.jitter
        lows = torch.tensor([1 - b, 1 - c, 1 - s, -h], dtype=torch.float64)
        highs = torch.tensor([1 + b, 1 + c, 1 + s, h], dtype=torch.float64)
        factors = lows + torch.rand((n, 4), generator=gen, dtype=torch.float64) * (highs - lows)
        active = applied.view(n, 1).expand(n, 4)
        if bool(applied.any()):
            dev = x.device
            x = batched_color.color_jitter(x, order.to(dev), factors.to(dev), active.to(dev))
        grey = torch.rand(n, generator=gen) < 0.2
        if x.shape[1] == 3 and bool(grey.any()):
            g = grey.to(x.device).view(n, 1, 1, 1)
            x = torch.where(g, batched_color.rgb_to_grayscale(x, num_output_channels=3), x)
        return x

    def blur(self, x: torch.Tensor, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        on = torch.rand(n, generator=gen) < p
        sigma = _uniform(gen, n, *self.blur_range) * on
        return gaussian_blur(x, sigma.to(torch.float32))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_batch(x, self.mean, self.std)

    def crops(self, images: torch.Tensor, size: int, scale, blur_p: Sequence[float], solarize_p: Sequence[float],
              gen: torch.Generator) -> list[torch.Tensor]:
        """``len(blur_p)`` crops of every image at ``size`` px, drawn and transformed as one batch;
        crop k blurs with probability ``blur_p[k]`` and solarises with ``solarize_p[k]``."""
        k = len(blur_p)
        n, c, height, width = images.shape
        x = images.repeat(k, 1, 1, 1)  # crop-major: rows [k n, (k + 1) n) are crop k
        boxes = random_resized_crop_boxes(n * k, height, width, scale, gen)
        flip = torch.rand(n * k, generator=gen) < 0.5
        x = crop_resize_flip(x, boxes, flip, size)
        x = self.color(x, gen)
        x = self.blur(x, torch.tensor(blur_p).repeat_interleave(n), gen)
        sol_p = torch.tensor(solarize_p).repeat_interleave(n)
        if bool((sol_p > 0).any()):
            x = solarize(x, torch.rand(n * k, generator=gen) < sol_p)
        return list(self.normalize(x).split(n))

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"BatchedMultiCrop expects images (N, 1 or 3, H, W), got {tuple(images.shape)}")
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        # g1: blur p=1; g2: blur p=0.1, solarise p=0.2; locals: blur p=0.5 (DINO's)
        out = self.crops(x, self.global_crops_size, self.global_crops_scale, (1.0, 0.1), (0.0, 0.2), gen)
        if self.local_crops_number:
            out += self.crops(x, self.local_crops_size, self.local_crops_scale, (0.5,) * self.local_crops_number,
                              (0.0,) * self.local_crops_number, gen)
        return out
