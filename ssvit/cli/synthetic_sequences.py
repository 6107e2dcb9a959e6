"""Write generated video sequences with known masks (``ssvit.data.synthetic_sequences``) in the DAVIS-2017
and/or I-PACE layouts, to try the segmentation-propagation tools without downloading a dataset.

    ssvit make-sequences --output_dir runs/synthetic_video --layout both

gives ``runs/synthetic_video/davis`` (``--data_path`` of ``eval_video_segmentation.py``) and
``runs/synthetic_video/ipace`` (``--data_path`` of ``eval_ipace_segmentation.py``). Re-running rewrites
the same files (fixed seeds).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional


from ssvit.cli import exit_status
from ssvit.data.synthetic_sequences import write_davis, write_ipace


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Generated sequences for the segmentation-propagation tools")
    p.add_argument("--output_dir", default="runs/synthetic_video", type=str)
    p.add_argument("--layout", default="both", choices=["davis", "ipace", "both"])
    p.add_argument("--n_sequences", default=3, type=int, help="videos (DAVIS) / runs (I-PACE)")
    p.add_argument("--n_frames", default=20, type=int)
    p.add_argument("--height", default=100, type=int)
    p.add_argument("--width", default=140, type=int)
    p.add_argument("--seed", default=0, type=int)
    return p


def main(argv: Optional[list] = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if min(args.n_sequences, args.n_frames) < 1 or min(args.height, args.width) < 16:
        raise ValueError("need --n_sequences, --n_frames >= 1 and --height, --width >= 16")
    size, out = (args.height, args.width), {}
    if args.layout in ("davis", "both"):
        root = os.path.join(args.output_dir, "davis")
        out["davis"] = write_davis(root, args.n_sequences, args.n_frames, size, seed=args.seed)
        print(f"DAVIS layout: {root} ({len(out['davis'])} videos x {args.n_frames} frames, {args.height}x{args.width})")
    if args.layout in ("ipace", "both"):
        root = os.path.join(args.output_dir, "ipace")
        out["ipace"] = write_ipace(root, args.n_sequences, args.n_frames, size, seed=args.seed + 100)
        print(f"I-PACE layout: {root} ({len(out['ipace'])} runs x {args.n_frames} frames, {args.height}x{args.width})")
    return out


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (ValueError, OSError), "make_synthetic_sequences.py")
