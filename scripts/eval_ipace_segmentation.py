"""I-PACE semantic-segmentation propagation (anthonyhu/dino, branch ``cleanup``): each run's frames are
processed in chunks of ``--refresh_label_interval`` frames, each chunk seeded with the ground truth of
its first frame and propagated with the frozen ViT's patch features (the DAVIS recipe at native
resolution); predictions go to ``output_dir/<run>/prediction/<frame stem>.png`` (P mode, the 27-class
palette), the chunk seeds being copies of the ground truth. Score them with
``scripts/compute_segmentation_metrics.py``.

    python scripts/eval_ipace_segmentation.py --arch vit_small --patch_size 16 \
        --pretrained_weights ckpt.pth --data_path DATAROOT --output_dir out/ipace

Layout: ``DATAROOT/<run>/image/<stem>.jpg`` and ``DATAROOT/<run>/segmentation/<stem>.png`` (L-mode class
ids 0..26, 255 = ignore). Frame sizes need not be multiples of the patch size: the ViT drops the
bottom/right remainder and the predictions are stretched over the whole frame, as the original.
``--arch mae`` evaluates an MAE pretraining checkpoint's encoder (``ssvit.evaluation.video_segmentation.
build_propagation_backbone`` documents the assumption); ``--path_to_mae_repo`` is accepted and unused
(ssvit builds the encoder itself). Differences: the segmentation path is found by the run's folder layout
(the original's string replace breaks on a data root containing "image"); the CPU works.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssvit.cli import exit_status  # noqa: E402
from ssvit.engine.distributed import DeviceError, resolve_device  # noqa: E402
from ssvit.evaluation.segmentation_io import frame_stem, ipace_palette, list_frames  # noqa: E402
from ssvit.evaluation.video_segmentation import (IPACE, add_propagation_args, build_propagation_backbone,  # noqa: E402
                                                 report_speed, segment_sequence)
from ssvit.utils.checkpoint import CheckpointError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Evaluation with video segmentation on I-PACE data")
    add_propagation_args(p, "a ViT of the registry, or mae")
    p.add_argument("--refresh_label_interval", type=int, default=50,
                   help="Interval to refresh segmentation label. Default to 50, i.e. 2 seconds.")
    p.add_argument("--path_to_mae_repo", type=str, default="", help="accepted for the original's commands; unused")
    return p


def run_dirs(data_path: str) -> list[str]:
    """The run folders of a data root (those with an ``image/`` folder), sorted."""
    if not os.path.isdir(data_path):
        raise FileNotFoundError(f"--data_path not found: {data_path}")
    runs = sorted(os.path.join(data_path, d) for d in os.listdir(data_path)
                  if os.path.isdir(os.path.join(data_path, d, "image")))
    if not runs:
        raise FileNotFoundError(f"no run folders with an image/ folder under {data_path}")
    return runs


def main(argv: Optional[list] = None) -> dict:
    """Segment every run; returns {run: [SequenceResult per chunk]}."""
    args = get_args_parser().parse_args(argv)
    if args.refresh_label_interval < 1:
        raise ValueError(f"--refresh_label_interval must be >= 1, got {args.refresh_label_interval}")
    runs = run_dirs(args.data_path)
    device = resolve_device(args.device)
    model = build_propagation_backbone(args.arch, args.patch_size, args.pretrained_weights, args.checkpoint_key, device)
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
            r = segment_sequence(model, chunk, seed, out, palette, IPACE, args.patch_size, args.n_last_frames,
                                 args.topk, args.size_mask_neighborhood)
            results[name].append(r)
    report_speed([r for rs in results.values() for r in rs], device)
    return results


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, FileNotFoundError, ValueError, DeviceError),
                       "eval_ipace_segmentation.py")


if __name__ == "__main__":
    sys.exit(cli())
