"""Visualise the last block's CLS self-attention per head (facebookresearch/dino ``visualize_attention.py``).

    ssvit attention --arch vit_small --patch_size 8 \
        --pretrained_weights ckpt.pth --image_path photo.jpg --threshold 0.6 --output_dir out/

Writes ``img.png``, ``attn-head{j}.png`` and, with ``--threshold``, ``mask_th{t}_head{j}.png``.
Differences from the original: weights are never downloaded (``--pretrained_weights`` is
required) and without ``--image_path`` scikit-image's bundled ``astronaut`` photo is used.
Errors about the weights or the image exit with status 2.
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch


from ssvit.cli import exit_status
from ssvit.utils.checkpoint import CheckpointError
from ssvit.evaluation.attention import (attention_maps, crop_to_patch_multiple, image_transform,
                                        load_image, save_attention_outputs)
from ssvit.evaluation.knn import build_eval_backbone


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Visualize Self-Attention maps")
    p.add_argument("--arch", default="vit_small", type=str, help="Architecture (a ViT of the registry).")
    p.add_argument("--patch_size", default=8, type=int, help="Patch resolution of the model.")
    p.add_argument("--pretrained_weights", default="", type=str, help="Path to pretrained weights to load.")
    p.add_argument("--checkpoint_key", default="teacher", type=str,
                   help='Key to use in the checkpoint (example: "teacher")')
    p.add_argument("--image_path", default=None, type=str, help="Path of the image to load.")
    p.add_argument("--image_size", default=(480, 480), type=int, nargs="+", help="Resize image.")
    p.add_argument("--output_dir", default=".", help="Path where to save visualizations.")
    p.add_argument("--threshold", type=float, default=None,
                   help="We visualize masks obtained by thresholding the self-attention maps to keep xx%% of the mass.")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(ssvit) where to run")
    return p


def main(argv: Optional[list] = None) -> list[str]:
    """Run the visualisation; returns the written paths. Raises ``CheckpointError`` /
    ``FileNotFoundError`` on bad input."""
    args = get_args_parser().parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    model = build_eval_backbone(args.arch, args.patch_size, args.pretrained_weights, args.checkpoint_key, device)
    for p in model.parameters():
        p.requires_grad = False

    img = image_transform(args.image_size)(load_image(args.image_path))
    img = crop_to_patch_multiple(img, args.patch_size)
    attn, th = attention_maps(model, img, args.patch_size, args.threshold)
    return save_attention_outputs(img, attn, th, args.output_dir, args.threshold)


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, FileNotFoundError, ValueError),
                       "visualize_attention.py")
