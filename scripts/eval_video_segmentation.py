"""DAVIS-2017 video object segmentation by label propagation (facebookresearch/dino
``eval_video_segmentation.py``): the first frame's annotation is propagated through each validation
video with the frozen ViT's last-block patch features, and every frame's prediction is written as a
DAVIS-palette PNG (``output_dir/<video>/<frame>.png``, ``00000.png`` = the first annotation), ready for
``davis2017-evaluation`` (J&F).

    python scripts/eval_video_segmentation.py --arch vit_small --patch_size 16 \
        --pretrained_weights ckpt.pth --data_path /path/to/davis-2017/DAVIS --output_dir out/davis

Layout: ``JPEGImages/480p/<video>/*.jpg``, ``Annotations/480p/<video>/00000.png``,
``ImageSets/2017/val.txt``. The recipe (``ssvit.evaluation.label_propagation``,
``ssvit.evaluation.segmentation_io``) is the original's; differences: the palette is built in (the
original downloads it), square frames get consistent label and feature grids, ``--n_last_frames 0``
(a deadlock in the original) is refused, any ssvit ViT and the CPU work. ``--bs`` is accepted and unused,
as in the original. Bad input exits 2 with a one-line message.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssvit.cli import exit_status  # noqa: E402
from ssvit.engine.distributed import DeviceError, resolve_device  # noqa: E402
from ssvit.evaluation.segmentation_io import davis_palette, frame_stem, list_frames  # noqa: E402
from ssvit.evaluation.video_segmentation import (DAVIS, add_propagation_args, build_propagation_backbone,  # noqa: E402
                                                 report_speed, segment_sequence)
from ssvit.utils.checkpoint import CheckpointError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Evaluation with video object segmentation on DAVIS 2017")
    add_propagation_args(p)
    p.add_argument("--video_list", default="ImageSets/2017/val.txt", type=str,
                   help="(ssvit) the list of videos, relative to --data_path")
    p.add_argument("--short_side", default=480, type=int,
                   help="(ssvit) frames resized to this short side (the long one floored to x64): 480 as the original")
    return p


def main(argv: Optional[list] = None) -> dict:
    """Segment every listed video; returns {video: SequenceResult}."""
    args = get_args_parser().parse_args(argv)
    list_path = os.path.join(args.data_path, args.video_list)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"video list not found: {list_path} (is --data_path a DAVIS-2017 folder?)")
    with open(list_path) as f:
        videos = [v.strip() for v in f if v.strip()]
    if args.short_side < 64 or args.short_side % args.patch_size:
        raise ValueError(f"--short_side must be >= 64 and a multiple of --patch_size, got {args.short_side}")
    device = resolve_device(args.device)
    model = build_propagation_backbone(args.arch, args.patch_size, args.pretrained_weights, args.checkpoint_key, device)
    palette = davis_palette()
    results = {}
    for i, video in enumerate(videos):
        print(f"[{i}/{len(videos)}] Begin to segmentate video {video}.")
        frame_list = list_frames(os.path.join(args.data_path, "JPEGImages", "480p", video))
        seed = os.path.join(args.data_path, "Annotations", "480p", video, frame_stem(frame_list[0]) + ".png")
        r = segment_sequence(model, frame_list, seed, os.path.join(args.output_dir, video), palette, DAVIS,
                             args.patch_size, args.n_last_frames, args.topk, args.size_mask_neighborhood,
                             args.short_side)
        results[video] = r
    report_speed(list(results.values()), device)
    return results


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, FileNotFoundError, ValueError, DeviceError),
                       "eval_video_segmentation.py")


if __name__ == "__main__":
    sys.exit(cli())
