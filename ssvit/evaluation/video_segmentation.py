"""Segment a frame sequence by label propagation from its first frame's annotation and write indexed PNGs:
the common body of ``ssvit propagate`` (DAVIS-2017) and
``ssvit propagate --layout ipace`` (I-PACE chunks), plus the backbone they evaluate.

Two recipes (``Recipe``): ``DAVIS`` (frames resized as DINO's ``read_frame``, first annotation via PIL
NEAREST, one-hot over ``max + 1`` labels, predictions upsampled ``x p`` then PIL NEAREST to the original
size, the first frame written as ``00000.png``) and ``IPACE`` (anthonyhu/dino ``cleanup``: native size,
torch-nearest seed over 256 channels, predictions upsampled straight to (H, W), the seed frame written
under its own stem).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn

from ..models.backbone import is_token_model
from .label_propagation import hard_labels, patch_features, propagate
from .segmentation_io import frame_stem, pil_nearest_resize, read_frame, read_seg_davis, read_seg_nearest
from ..utils.label_png import imwrite_indexed


class Recipe(NamedTuple):
    resize_frames: bool                                   # DAVIS short side 480 (True) or native (False)
    read_seed: Callable[..., tuple]                       # (path, patch[, short]) -> (one-hot (1, C, h, w), labels)
    upsample_by_patch: bool                               # x p then PIL NEAREST (True) or straight to (H, W)
    first_name: Optional[str]                             # the seed frame's file name (None: its own stem)


DAVIS = Recipe(True, read_seg_davis, True, "00000.png")
IPACE = Recipe(False, read_seg_nearest, False, None)


class SequenceResult(NamedTuple):
    written: list          # paths of the PNGs, seed frame first
    frames: int            # propagated frames (the seed excluded)
    seconds: float         # wall time of the propagated frames (reading, features, propagation, writing)


@torch.no_grad()
def segment_sequence(model: nn.Module, frame_paths: list[str], seed_path: str, out_dir: str, palette: np.ndarray,
                     recipe: Recipe, patch_size: int, n_last_frames: int = 7, topk: int = 5,
                     size_mask_neighborhood: int = 12, short_side: int = 480) -> SequenceResult:
    """Propagate the annotation ``seed_path`` of ``frame_paths[0]`` through the other frames into ``out_dir``
    (``short_side``: the DAVIS recipe's frame size, 480 as the original)."""
    os.makedirs(out_dir, exist_ok=True)
    if recipe.resize_frames:
        first_seg, seg_ori = recipe.read_seed(seed_path, patch_size, short_side)
    else:
        first_seg, seg_ori = recipe.read_seed(seed_path, patch_size)
    frame1, ori_h, ori_w = read_frame(frame_paths[0], recipe.resize_frames, short_side)
    if seg_ori.shape != (ori_h, ori_w):
        raise ValueError(f"{seed_path}: labels {seg_ori.shape} and frame {(ori_h, ori_w)} differ in size")
    feat1, h, w = patch_features(model, frame1, patch_size)
    if tuple(first_seg.shape[-2:]) != (h, w):
        raise ValueError(f"{seed_path}: label grid {tuple(first_seg.shape[-2:])} != feature grid {(h, w)}")
    first = os.path.join(out_dir, recipe.first_name or frame_stem(frame_paths[0]) + ".png")
    imwrite_indexed(first, seg_ori, palette)
    written = [first]
    start = time.perf_counter()

    def feats():
        for path in frame_paths[1:]:
            frame, fh, fw = read_frame(path, recipe.resize_frames, short_side)
            if (fh, fw) != (ori_h, ori_w):
                raise ValueError(f"{path}: frame size {(fh, fw)} differs from the sequence's {(ori_h, ori_w)}")
            yield patch_features(model, frame, patch_size)[0]

    for step in propagate(feat1, first_seg, feats(), n_last_frames, topk, size_mask_neighborhood, grid=(h, w)):
        soft = step.soft.float()
        if recipe.upsample_by_patch:
            ids = pil_nearest_resize(hard_labels(soft, scale_factor=patch_size).cpu().numpy(), (ori_w, ori_h))
        else:
            ids = hard_labels(soft, size=(ori_h, ori_w)).cpu().numpy()
        path = os.path.join(out_dir, frame_stem(frame_paths[step.index]) + ".png")
        imwrite_indexed(path, ids, palette)
        written.append(path)
    return SequenceResult(written, len(frame_paths) - 1, time.perf_counter() - start)


def report_speed(results: list[SequenceResult], device) -> Optional[float]:
    """Print and return the seconds per propagated frame over ``results`` (None when nothing was propagated)."""
    frames, seconds = sum(r.frames for r in results), sum(r.seconds for r in results)
    if not frames:
        return None
    print(f"{frames} frames propagated in {seconds:.1f} s ({seconds / frames:.3f} s per frame on {device})")
    return seconds / frames


MAE_ARCHS = {"mae": ("vit_base", 16)}  # anthonyhu/dino's --arch mae: mae_vit_base_patch16's encoder


def build_propagation_backbone(arch: str, patch_size: int, pretrained_weights: str, checkpoint_key: str = "teacher",
                               device: torch.device | str = "cpu") -> nn.Module:
    """The frozen ViT whose last-block patch tokens are propagated: any ssvit ViT from a DINO / iBOT / ssvit
    checkpoint, or ``mae`` -- an MAE pretraining checkpoint's encoder (``checkpoint['model']`` without the
    ``decoder_*`` / ``mask_token`` entries) as ``vit_base`` patch 16. Assumption (documented): the fork's
    private MAE ``forward_features`` is the encoder without masking, final norm, CLS dropped, token grid --
    what ``patch_features`` takes from any ViT; its fixed sin-cos ``pos_embed`` is interpolated to the frame
    grid by DINO's rule."""
    from ..models import create_backbone
    from ..models.loading import load_backbone_state, read_pretrained_state
    from .knn import build_eval_backbone, grid_img_size
    if arch in ("resnet50", "vqvae"):
        raise ValueError(f"--arch {arch}: the fork's hard-coded {arch} experiment is not reproduced (ViTs and mae only)")
    if arch in MAE_ARCHS:
        vit, p = MAE_ARCHS[arch]
        if patch_size != p:
            raise ValueError(f"--arch {arch} is {vit} with patch {p}, got --patch_size {patch_size}")
        sd = read_pretrained_state(pretrained_weights, "model")
        sd = {k: v for k, v in sd.items() if not k.startswith("decoder_") and k != "mask_token"}
        kwargs = dict(patch_size=p, num_classes=0)
        if grid_img_size(sd, p):
            kwargs["img_size"] = grid_img_size(sd, p)
        model = create_backbone(vit, **kwargs)
        load_backbone_state(model, sd, arch)
        print(f"MAE encoder weights found at {pretrained_weights} and loaded as {vit}/{p}")
        model = model.to(device).eval()
    else:
        model = build_eval_backbone(arch, patch_size, pretrained_weights, checkpoint_key, device)
    if not is_token_model(model):
        raise ValueError(f"--arch {arch}: label propagation needs a ViT (the last block's patch tokens)")
    for prm in model.parameters():
        prm.requires_grad = False
    return model


def add_propagation_args(p: argparse.ArgumentParser, arch_help: str = "a ViT of the registry") -> None:
    """The flags DINO's DAVIS script and the I-PACE fork share (names and defaults of the originals)."""
    p.add_argument("--pretrained_weights", default="", type=str, help="Path to pretrained weights to evaluate.")
    p.add_argument("--arch", default="vit_small", type=str, help=f"Architecture ({arch_help}).")
    p.add_argument("--patch_size", default=16, type=int, help="Patch resolution of the model.")
    p.add_argument("--checkpoint_key", default="teacher", type=str,
                   help='Key to use in the checkpoint (example: "teacher")')
    p.add_argument("--output_dir", default=".", help="Path where to save segmentations")
    p.add_argument("--data_path", default="/path/to/davis/", type=str)
    p.add_argument("--n_last_frames", type=int, default=7, help="number of preceeding frames")
    p.add_argument("--size_mask_neighborhood", default=12, type=int,
                   help="We restrict the set of source nodes considered to a spatial neighborhood of the query node")
    p.add_argument("--topk", type=int, default=5, help="accumulate label from top k neighbors")
    p.add_argument("--bs", type=int, default=6, help="Batch size, try to reduce if OOM (unused, as the original)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(ssvit) where to run")
