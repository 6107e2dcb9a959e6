"""``ssvit propagate``: segmentation by label propagation with a frozen ViT's last-block patch features,
for two layouts (``--layout``).

``davis`` (default; facebookresearch/dino ``eval_video_segmentation.py``): the first frame's annotation
is propagated through each validation video, every frame's prediction written as a DAVIS-palette PNG
(``output_dir/<video>/<frame>.png``, ``00000.png`` = the first annotation), ready for
``davis2017-evaluation`` (J&F) or ``ssvit seg-metrics``. Layout: ``JPEGImages/480p/<video>/*.jpg``,
``Annotations/480p/<video>/00000.png``, ``ImageSets/2017/val.txt``.

    ssvit propagate --arch vit_small --patch_size 16 --pretrained_weights ckpt.pth \\
        --data_path /path/to/davis-2017/DAVIS --output_dir out/davis

``ipace`` (anthonyhu/dino, branch ``cleanup``, ``eval_ipace_segmentation.py``): each run's frames in
chunks of ``--refresh_label_interval``, each chunk seeded with the ground truth of its first frame, at
native resolution; predictions in ``output_dir/<run>/prediction/<frame stem>.png`` (P mode, the
27-class palette). Layout: ``DATAROOT/<run>/image/<stem>.jpg`` and ``DATAROOT/<run>/segmentation/<stem>.png``
(L-mode class ids 0..26, 255 = ignore). ``--arch mae`` evaluates an MAE checkpoint's encoder;
``--path_to_mae_repo`` is accepted and unused.

The recipe (``ssvit.evaluation.label_propagation``, ``ssvit.evaluation.segmentation_io``) is the
originals'; differences: the palettes are built in (DAVIS's original downloads it), square DAVIS
frames get consistent label and feature grids, ``--n_last_frames 0`` (a deadlock in the original) is
refused, the I-PACE segmentation path is found by the run's folder layout (the original's string
replace breaks on a data root containing "image"), any ssvit ViT and the CPU work. ``--bs`` is
accepted and unused, as in the original. Bad input exits 2 with a one-line message.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from ssvit.cli import exit_status
from ssvit.config import parse_with_config
from ssvit.engine.distributed import DeviceError, resolve_device
from ssvit.evaluation.segmentation_io import frame_stem, list_frames
from ssvit.evaluation.video_segmentation import (DAVIS, IPACE, add_propagation_args, build_propagation_backbone,
                                                 report_speed, segment_sequence)
from ssvit.utils.checkpoint import CheckpointError
from ssvit.utils.label_png import davis_palette, ipace_palette


def get_args_parser(layout: str = "davis") -> argparse.ArgumentParser:
    title = {"davis": "Evaluation with video object segmentation on DAVIS 2017",
             "ipace": "Evaluation with video segmentation on I-PACE data"}[layout]
    p = argparse.ArgumentParser(title)
    p.add_argument("--layout", default="davis", choices=["davis", "ipace"],
                   help="davis: DAVIS-2017 videos (DINO's eval_video_segmentation.py); ipace: I-PACE runs (the "
                        "anthonyhu/dino fork's eval_ipace_segmentation.py)")
    p.add_argument("--config", default=None, type=str, help="YAML file of flag defaults (e.g. a recipe); flags override")
    add_propagation_args(p, "a ViT of the registry, or mae")
    g = p.add_argument_group("davis")
    g.add_argument("--video_list", default="ImageSets/2017/val.txt", type=str,
                   help="(ssvit) the list of videos, relative to --data_path")
    g.add_argument("--short_side", default=480, type=int,
                   help="(ssvit) frames resized to this short side (the long one floored to x64): 480 as the original")
    g = p.add_argument_group("ipace")
    g.add_argument("--refresh_label_interval", type=int, default=50,
                   help="Interval to refresh segmentation label. Default to 50, i.e. 2 seconds.")
    g.add_argument("--path_to_mae_repo", type=str, default="", help="accepted for the original's commands; unused")
    return p


def davis_videos(args) -> list[str]:
    """The videos of ``--video_list``."""
    list_path = os.path.join(args.data_path, args.video_list)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"video list not found: {list_path} (is --data_path a DAVIS-2017 folder?)")
    with open(list_path) as f:
        return [v.strip() for v in f if v.strip()]


def segment_davis(args, model, device, videos: list[str]) -> dict:
    """Segment every listed video; returns {video: SequenceResult}."""
    palette = davis_palette()
    results = {}
    for i, video in enumerate(videos):
        print(f"[{i}/{len(videos)}] Begin to segmentate video {video}.")
        frame_list = list_frames(os.path.join(args.data_path, "JPEGImages", "480p", video))
        seed = os.path.join(args.data_path, "Annotations", "480p", video, frame_stem(frame_list[0]) + ".png")
        results[video] = segment_sequence(model, frame_list, seed, os.path.join(args.output_dir, video), palette,
                                          DAVIS, args.patch_size, args.n_last_frames, args.topk,
                                          args.size_mask_neighborhood, args.short_side)
    report_speed(list(results.values()), device)
    return results


def run_dirs(data_path: str) -> list[str]:
    """The I-PACE run folders of a data root (those with an ``image/`` folder), sorted."""
    if not os.path.isdir(data_path):
        raise FileNotFoundError(f"--data_path not found: {data_path}")
    runs = sorted(os.path.join(data_path, d) for d in os.listdir(data_path)
                  if os.path.isdir(os.path.join(data_path, d, "image")))
    if not runs:
        raise FileNotFoundError(f"no run folders with an image/ folder under {data_path}")
    return runs


def segment_ipace(args, model, device, runs: list[str]) -> dict:
    """Segment every run; returns {run: [SequenceResult per chunk]}."""
    palette = ipace_palette()
    results = {}
    for i, run in enumerate(runs):
        name = os.path.basename(run)
        print(f"[{i + 1}/{len(runs)}] Segmenting {name}")
        frame_list = list_frames(os.path.join(run, "image"))
        out = os.path.join(args.output_dir, name, "prediction")
        results[name] = []
        for start in range(0, len(frame_list), args.refresh_label_interval):
            chunk = frame_list[start:start + args.refresh_label_interval]
            seed = os.path.join(run, "segmentation", frame_stem(chunk[0]) + ".png")
            results[name].append(segment_sequence(model, chunk, seed, out, palette, IPACE, args.patch_size,
                                                  args.n_last_frames, args.topk, args.size_mask_neighborhood))
    report_speed([r for rs in results.values() for r in rs], device)
    return results


def main(argv: Optional[list] = None) -> dict:
    args = parse_with_config(get_args_parser(), argv)
    if args.layout == "davis":  # bad input fails before the model is built
        items = davis_videos(args)
        if args.short_side < 64 or args.short_side % args.patch_size:
            raise ValueError(f"--short_side must be >= 64 and a multiple of --patch_size, got {args.short_side}")
    if args.layout == "ipace":
        if args.refresh_label_interval < 1:
            raise ValueError(f"--refresh_label_interval must be >= 1, got {args.refresh_label_interval}")
        items = run_dirs(args.data_path)
    device = resolve_device(args.device)
    model = build_propagation_backbone(args.arch, args.patch_size, args.pretrained_weights, args.checkpoint_key, device)
    return (segment_davis if args.layout == "davis" else segment_ipace)(args, model, device, items)


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, FileNotFoundError, ValueError, DeviceError),
                       "ssvit propagate")
