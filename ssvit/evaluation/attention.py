"""Self-attention maps of the CLS token (Caron et al., "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021; facebookresearch/dino ``visualize_attention.py``).

``attention_maps`` computes, for each head of the last block, the attention of the CLS query to
every patch, upsampled (nearest) to pixels, and optionally DINO's threshold masks (the most
attended patches holding ``threshold`` of the mass). ``save_*`` write the original's PNG files
and a grid figure for a batch. Plots use matplotlib's Agg canvas (no display, no pyplot state).
"""
from __future__ import annotations

import colorsys
import os
import random
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_to_patch_multiple(img: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Crop (C, H, W) or (B, C, H, W) at the bottom/right to multiples of ``patch_size``."""
    h = img.shape[-2] - img.shape[-2] % patch_size
    w = img.shape[-1] - img.shape[-1] % patch_size
    if h == 0 or w == 0:
        raise ValueError(f"image {tuple(img.shape[-2:])} is smaller than one {patch_size}px patch")
    return img[..., :h, :w]


def threshold_masks(attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """DINO's mask: per row of ``attn`` (heads, N) keep the largest entries whose share of the row
    sum first exceeds ``threshold`` (sort ascending, normalise, cumsum > 1 - threshold, unsort).
    Returns a float {0,1} tensor of the same shape. The kept share ``m`` satisfies
    ``threshold <= m < threshold + max share``.
    """
    val, idx = torch.sort(attn, dim=1)
    val = val / val.sum(dim=1, keepdim=True)
    keep_sorted = torch.cumsum(val, dim=1) > (1 - threshold)
    idx2 = torch.argsort(idx, dim=1)
    return torch.gather(keep_sorted, 1, idx2).float()


@torch.no_grad()
def attention_maps(model: nn.Module, img_tensor: torch.Tensor, patch_size: int,
                   threshold: Optional[float] = None):
    """CLS -> patch attention of the last block, per head.

    ``img_tensor``: one normalised image (3, H, W) or (1, 3, H, W); it is cropped to multiples of
    ``patch_size`` (H' = H - H % p, W' likewise). ``model.get_last_selfattention`` must return
    (1, heads, 1+N, 1+N). Returns ``(attn, th_masks)``: ``attn`` float32 CPU (heads, H', W'), the
    raw post-softmax weights of each patch nearest-upsampled ×p (per head they sum, over the
    h×w grid, to 1 minus the CLS->CLS weight); ``th_masks`` (heads, H', W') {0,1} float32 from
    ``threshold_masks`` (upsampled likewise), or ``None`` when ``threshold`` is None.
    """
    if img_tensor.ndim == 3:
        img_tensor = img_tensor.unsqueeze(0)
    if img_tensor.ndim != 4 or img_tensor.shape[0] != 1:
        raise ValueError(f"expected one image (3, H, W) or (1, 3, H, W), got {tuple(img_tensor.shape)}")
    img = crop_to_patch_multiple(img_tensor, patch_size)
    h_feat, w_feat = img.shape[-2] // patch_size, img.shape[-1] // patch_size
    device = next(model.parameters()).device
    attentions = model.get_last_selfattention(img.to(device)).float()
    nh = attentions.shape[1]
    attentions = attentions[0, :, 0, 1:].reshape(nh, -1)  # (heads, h*w)
    if attentions.shape[1] != h_feat * w_feat:
        raise ValueError(f"attention has {attentions.shape[1]} patch columns, expected {h_feat}x{w_feat}")
    th = None
    if threshold is not None:
        th = threshold_masks(attentions, threshold).reshape(1, nh, h_feat, w_feat)
        th = F.interpolate(th, scale_factor=patch_size, mode="nearest")[0].cpu()
    attn = attentions.reshape(1, nh, h_feat, w_feat)
    attn = F.interpolate(attn, scale_factor=patch_size, mode="nearest")[0].cpu()
    return attn, th


# --------------------------------------------------------------------------- image helpers
def load_image(image_path: Optional[str] = None):
    """RGB PIL image from ``image_path``; without one, scikit-image's bundled ``astronaut`` photo
    (the original downloads its paper image; ssvit never downloads)."""
    from PIL import Image
    if image_path is None:
        import skimage.data
        return Image.fromarray(skimage.data.astronaut()).convert("RGB")
    if not os.path.isfile(image_path):
        raise FileNotFoundError(f"Provided image path {image_path} is non valid.")
    with open(image_path, "rb") as f:
        return Image.open(f).convert("RGB")


def image_transform(image_size: Sequence[int] | int):
    """Resize(image_size) (two ints = exact H, W; one = shorter side), ToTensor, Normalize."""
    from torchvision import transforms
    if isinstance(image_size, (list, tuple)) and len(image_size) == 1:
        image_size = image_size[0]
    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else int(image_size)
    return transforms.Compose([transforms.Resize(size), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def to_display(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float in [0, 1], min-max normalised (as ``img.png``)."""
    return _minmax(img.detach().float().cpu().permute(1, 2, 0).numpy())


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, frameon=False)
    FigureCanvasAgg(fig)
    return fig


def random_colors(n: int, bright: bool = True) -> list:
    """DINO's colours: ``n`` evenly spaced HSV hues, shuffled (a single mask is always red)."""
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / n, 1, brightness) for i in range(n)]
    random.shuffle(colors)
    return colors


def display_instances(image: np.ndarray, mask: np.ndarray, fname: str, figsize=(5, 5),
                      contour: bool = True, alpha: float = 0.5) -> None:
    """DINO's ``display_instances``: uint8 image (H, W, 3) with ``mask`` (H, W) blended at ``alpha``
    in a random colour and its contours (``skimage.measure.find_contours`` at 0.5 on the
    zero-padded mask) drawn as polygons; 5x5-inch figure saved to ``fname``."""
    from matplotlib.patches import Polygon
    from skimage.measure import find_contours
    fig = _new_figure(figsize)
    ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
    ax.set_axis_off()
    color = random_colors(1)[0]
    height, width = image.shape[:2]
    ax.set_ylim(height, 0)
    ax.set_xlim(0, width)
    masked = image.astype(np.uint32).copy()
    for c in range(3):
        masked[:, :, c] = masked[:, :, c] * (1 - alpha * mask) + alpha * mask * color[c] * 255
    if contour:
        padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2))
        padded[1:-1, 1:-1] = mask
        for verts in find_contours(padded, 0.5):
            verts = np.fliplr(verts) - 1  # remove padding, (y, x) -> (x, y)
            ax.add_patch(Polygon(verts, facecolor="none", edgecolor=color))
    ax.imshow(masked.astype(np.uint8), aspect="auto")
    fig.savefig(fname)
    print(f"{fname} saved.")


def save_attention_outputs(img: torch.Tensor, attn: torch.Tensor, th_masks: Optional[torch.Tensor],
                           output_dir: str, threshold: Optional[float] = None) -> list[str]:
    """The original's files: ``img.png`` (cropped input, min-max normalised), ``attn-head{j}.png``
    (default colormap) and, with masks, ``mask_th{threshold}_head{j}.png``. Returns the paths."""
    import matplotlib.image as mpimg
    os.makedirs(output_dir, exist_ok=True)
    if img.ndim == 4:
        img = img[0]
    img = img[..., :attn.shape[-2], :attn.shape[-1]]
    paths = []
    image_u8 = (to_display(img) * 255).round().astype(np.uint8)  # what the original re-reads from img.png
    p = os.path.join(output_dir, "img.png")
    mpimg.imsave(p, image_u8)
    paths.append(p)
    for j in range(attn.shape[0]):
        p = os.path.join(output_dir, f"attn-head{j}.png")
        mpimg.imsave(p, attn[j].numpy(), format="png")
        print(f"{p} saved.")
        paths.append(p)
    if th_masks is not None:
        for j in range(th_masks.shape[0]):
            p = os.path.join(output_dir, f"mask_th{threshold}_head{j}.png")
            display_instances(image_u8, th_masks[j].numpy(), fname=p)
            paths.append(p)
    return paths


def save_attention_figure(images, maps, path: str, titles: Optional[Sequence[str]] = None) -> str:
    """One PNG grid: row 1 the input images (min-max normalised), row 2 their attention maps.

    ``images``: (B, 3, H, W) tensor or a list of (3, H_i, W_i); ``maps``: (B, H, W) or
    (B, heads, H, W) (averaged over heads) or a list of (H_i, W_i) / (heads, H_i, W_i).
    """
    b = len(images)
    if len(maps) != b or b == 0:
        raise ValueError(f"need as many maps as images (got {len(maps)} maps, {b} images)")
    fig = _new_figure((2.0 * b, 4.2))
    for i in range(b):
        m = torch.as_tensor(maps[i]).float().cpu()
        if m.ndim == 3:
            m = m.mean(0)
        img = to_display(torch.as_tensor(images[i]))
        ax = fig.add_subplot(2, b, i + 1)
        ax.imshow(img)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
        ax = fig.add_subplot(2, b, b + i + 1)
        ax.imshow(m.numpy())
        ax.set_axis_off()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path
