"""IoU of propagated segmentations against the ground truth (anthonyhu/dino ``compute_segmentation_metrics.py``,
branch ``cleanup``), with the confusion matrix computed here (``ssvit.evaluation.segmentation_metrics``;
no torchmetrics).

    ssvit seg-metrics --dataset_path DATAROOT/<run> --prediction_path P

For every ``<run>/image/<stem>.jpg`` (sorted) the ground truth is ``<run>/segmentation/<stem>.png`` and the
prediction ``P/<run>/prediction/<stem>.png``; pixels whose ground truth or prediction is 255 are dropped,
one confusion matrix is accumulated over all frames of the run (chunk seeds included, as the original),
and the mean IoU over all 27 classes (absent classes count 0) is printed as ``IoU: <float>``. Written:
``P/<run>/metrics.json`` (``mean_iou``, ``per_class_iou`` in class-id order, pixel counts) and, with
``--save_vis``, ``P/<run>/vis/<stem>.png`` (image + ground truth | image + prediction). Several
``--dataset_path`` runs (or ``--data_root``, every run under it) add ``P/summary.json`` and a table:
each run's mean IoU, their mean, and the IoU of the pooled confusion matrix.

``--davis_path DAVIS --prediction_path OUT`` instead scores ``eval_video_segmentation.py``'s output by the
region similarity J (per object and frame, the first frame left out, averaged per video; printed as
``J: <float>``, JSON in ``OUT/davis_j.json``): a quick check, not the DAVIS toolkit's J&F (no contour F).

Difference: ``--save_vis`` / ``--compute_metrics`` parse ``false``/``0``/``no`` as False (the original's
``type=bool`` makes every non-empty string True).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import numpy as np
from PIL import Image


from ssvit.cli import exit_status
from ssvit.utils.label_png import IPACE_NUM_CLASSES, read_labels
from ssvit.evaluation.segmentation_io import frame_stem, list_frames
from ssvit.evaluation.segmentation_metrics import ConfusionMatrix, overlay_panel, region_similarity


def str2bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes", "y", "t"):
        return True
    if v.lower() in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Calculate segmentation metrics on I-PACE data")
    p.add_argument("--dataset_path", default=[], type=str, nargs="+", help="Path to dataset (one or more runs).")
    p.add_argument("--data_root", default="", type=str, help="(ssvit) every run folder under this root")
    p.add_argument("--prediction_path", default="", type=str, help="Path to the predicted segmentations.")
    p.add_argument("--save_vis", type=str2bool, default=True, help="Whether to save overlayed visualisations.")
    p.add_argument("--compute_metrics", type=str2bool, default=True, help="Whether to compute metrics.")
    p.add_argument("--num_classes", type=int, default=IPACE_NUM_CLASSES, help="(ssvit) classes of the IoU")
    p.add_argument("--davis_path", default="", type=str,
                   help="(ssvit) a DAVIS-2017 folder: score --prediction_path by region similarity J instead")
    return p


def evaluate_davis(davis_path: str, prediction_path: str, video_list: str = "ImageSets/2017/val.txt") -> dict:
    """Mean J per video of DAVIS-layout predictions (objects = the ids of the first annotation but 0)."""
    list_path = os.path.join(davis_path, video_list)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"video list not found: {list_path}")
    with open(list_path) as f:
        videos = [v.strip() for v in f if v.strip()]
    per_video = {}
    for video in videos:
        ann = os.path.join(davis_path, "Annotations", "480p", video)
        frames = sorted(f for f in os.listdir(ann) if f.endswith(".png")) if os.path.isdir(ann) else []
        if not frames:
            raise FileNotFoundError(f"no annotations in {ann}")
        objects = [int(k) for k in np.unique(read_labels(os.path.join(ann, frames[0]))) if k not in (0, 255)]
        scores = [region_similarity(read_labels(os.path.join(prediction_path, video, f)),
                                    read_labels(os.path.join(ann, f)), objects) for f in frames[1:]]
        per_video[video] = float(np.mean(scores)) if scores else 1.0
        print(f"{video}  J: {per_video[video]:.4f}")
    out = {"per_video_j": per_video, "mean_j": float(np.mean(list(per_video.values())))}
    print(f"J: {out['mean_j']}")
    with open(os.path.join(prediction_path, "davis_j.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def evaluate_run(run: str, prediction_path: str, num_classes: int = IPACE_NUM_CLASSES, save_vis: bool = True,
                 compute_metrics: bool = True) -> Optional[ConfusionMatrix]:
    """Score (and draw) one run; returns its confusion matrix (None without ``compute_metrics``)."""
    name = os.path.basename(os.path.normpath(run))
    pred_dir = os.path.join(prediction_path, name, "prediction")
    cm = ConfusionMatrix(num_classes) if compute_metrics else None
    for image_path in list_frames(os.path.join(run, "image")):
        stem = frame_stem(image_path)
        gt = read_labels(os.path.join(run, "segmentation", stem + ".png"))
        pred = read_labels(os.path.join(pred_dir, stem + ".png"))
        if cm is not None:
            try:
                cm.update(pred, gt)
            except ValueError as e:
                raise ValueError(f"{os.path.join(pred_dir, stem + '.png')}: {e}") from e
        if save_vis:
            with Image.open(image_path) as im:
                img = np.asarray(im.convert("RGB"))
            vis_dir = os.path.join(prediction_path, name, "vis")
            os.makedirs(vis_dir, exist_ok=True)
            Image.fromarray(overlay_panel(img, gt, pred)).save(os.path.join(vis_dir, stem + ".png"))
    if cm is not None:
        out = dict(run=name, **cm.summary())
        with open(os.path.join(prediction_path, name, "metrics.json"), "w") as f:
            json.dump(out, f, indent=1)
    return cm


def main(argv: Optional[list] = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.davis_path:
        if not args.prediction_path:
            raise ValueError("--prediction_path is required (the --output_dir of eval_video_segmentation.py)")
        return evaluate_davis(args.davis_path, args.prediction_path)
    runs = list(args.dataset_path)
    if args.data_root:
        if not os.path.isdir(args.data_root):
            raise FileNotFoundError(f"--data_root not found: {args.data_root}")
        runs += sorted(os.path.join(args.data_root, d) for d in os.listdir(args.data_root)
                       if os.path.isdir(os.path.join(args.data_root, d, "image")))
    if not runs:
        raise ValueError("give --dataset_path RUN [RUN ...] or --data_root DATAROOT")
    if not args.prediction_path:
        raise ValueError("--prediction_path is required (the --output_dir of eval_ipace_segmentation.py)")
    per_run, present, pooled = {}, {}, ConfusionMatrix(args.num_classes)
    for run in runs:
        cm = evaluate_run(run, args.prediction_path, args.num_classes, args.save_vis, args.compute_metrics)
        if cm is not None:
            per_run[os.path.basename(os.path.normpath(run))] = cm.mean_iou()
            present[os.path.basename(os.path.normpath(run))] = cm.mean_iou_present()
            pooled += cm
            print(f"IoU: {cm.mean_iou()}")
    if not args.compute_metrics:
        return {}
    summary = {"per_run_mean_iou": per_run, "mean_of_runs": float(np.mean(list(per_run.values()))),
               "pooled_mean_iou": pooled.mean_iou(), "pooled": pooled.summary()}
    if len(runs) > 1:
        width = max(len(r) for r in per_run)
        print(f"{'run':<{width}}  mean IoU (27 classes)  over present classes")
        for r, v in per_run.items():
            print(f"{r:<{width}}  {v:.4f}                {present[r]:.4f}")
        print(f"{'mean':<{width}}  {summary['mean_of_runs']:.4f}\n"
              f"{'pooled':<{width}}  {summary['pooled_mean_iou']:.4f}                {pooled.mean_iou_present():.4f}")
        with open(os.path.join(args.prediction_path, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (FileNotFoundError, ValueError), "compute_segmentation_metrics.py")
