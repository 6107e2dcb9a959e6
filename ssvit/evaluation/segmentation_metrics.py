"""Semantic-segmentation IoU from a confusion matrix, as anthonyhu/dino's ``compute_segmentation_metrics.py``
(torchmetrics 0.6 ``IoU(num_classes=27)`` with its ``update`` override), without torchmetrics.

Pixels whose ground truth **or** prediction is 255 are dropped; one confusion matrix (rows = ground
truth, columns = prediction) is accumulated over all pixels of all frames of a run;
``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, a class with an empty union scores 0 (torchmetrics'
``absent_score``), and the reported figure is the mean over **all** classes, absent ones included.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..utils.label_png import IGNORE, IPACE_COLOURS


class ConfusionMatrix:
    """Accumulates (num_classes, num_classes) int64 counts of (ground truth, prediction) pairs."""

    def __init__(self, num_classes: int = len(IPACE_COLOURS), ignore: int = IGNORE):
        self.num_classes, self.ignore = num_classes, ignore
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.dropped = 0

    def update(self, pred, target) -> None:
        pred, target = torch.from_numpy(np.array(pred, dtype=np.int64)), torch.from_numpy(np.array(target, dtype=np.int64))
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in size")
        keep = (target != self.ignore) & (pred != self.ignore)
        self.dropped += int((~keep).sum())
        p, t = pred[keep], target[keep]
        for name, v in (("prediction", p), ("ground truth", t)):
            if v.numel() and (v.min() < 0 or v.max() >= self.num_classes):
                bad = int(v[(v < 0) | (v >= self.num_classes)][0])
                raise ValueError(f"{name} holds class id {bad}, outside 0..{self.num_classes - 1} (and not {self.ignore})")
        self.mat += torch.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes)

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.mat += other.mat
        self.dropped += other.dropped
        return self

    def per_class_iou(self, absent_score: float = 0.0) -> torch.Tensor:
        inter = torch.diag(self.mat).double()
        union = self.mat.sum(0).double() + self.mat.sum(1).double() - inter
        iou = inter / union.clamp_min(1)
        return torch.where(union == 0, torch.full_like(iou, absent_score), iou)

    def mean_iou(self) -> float:
        return float(self.per_class_iou().mean())

    def mean_iou_present(self) -> float:
        """Mean IoU over the classes present in the ground truth (not the original's figure: an aid to read it
        when most of the 27 classes are absent)."""
        present = self.mat.sum(1) > 0
        return float(self.per_class_iou()[present].mean()) if present.any() else 0.0

    def summary(self) -> dict:
        """JSON-ready: ``mean_iou``, ``per_class_iou`` (class-id order), and pixel counts."""
        return {"mean_iou": self.mean_iou(), "mean_iou_present_classes": self.mean_iou_present(),
                "per_class_iou": [float(v) for v in self.per_class_iou()],
                "pixels_counted": int(self.mat.sum()), "pixels_dropped": self.dropped,
                "gt_pixels_per_class": [int(v) for v in self.mat.sum(1)],
                "pred_pixels_per_class": [int(v) for v in self.mat.sum(0)],
                "pixel_accuracy": float(torch.diag(self.mat).sum() / self.mat.sum().clamp_min(1))}


def render_semseg(labels: np.ndarray, colours=IPACE_COLOURS) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) float colours in [0, 1]; ids outside the colour table are black."""
    out = np.zeros((*labels.shape, 3))
    for i, c in enumerate(colours):
        out[labels == i] = np.asarray(c) / 255.0
    return out


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def overlay_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, colours=IPACE_COLOURS,
                  legend_y: Optional[int] = None) -> np.ndarray:
    """``[0.5 img + 0.5 colour(gt) | 10 px black | 0.5 img + 0.5 colour(pred)]`` uint8 with the legends
    "Ground truth" / "Prediction" (DejaVuSans 20 pt at y = 290 as the original; higher on frames shorter
    than 314 px, where 290 is off the picture)."""
    from PIL import Image, ImageDraw
    img = np.asarray(image, dtype=np.float64) / 255.0
    left = 0.5 * img + 0.5 * render_semseg(gt, colours)
    right = 0.5 * img + 0.5 * render_semseg(pred, colours)
    panel = (255 * np.hstack([left, np.zeros((img.shape[0], 10, 3)), right])).astype(np.uint8)
    h, w = img.shape[:2]
    y = legend_y if legend_y is not None else min(290, max(0, h - 24))
    pil = Image.fromarray(panel)
    draw = ImageDraw.Draw(pil)
    font = _font(20)
    draw.text((w // 2 - 70, y), "Ground truth", (255, 255, 255), font=font)
    draw.text((w + w // 2 - 40, y), "Prediction", (255, 255, 255), font=font)
    return np.asarray(pil)


def region_similarity(pred: np.ndarray, gt: np.ndarray, object_ids) -> list[float]:
    """DAVIS's region similarity J per object of one frame: ``|P_k & G_k| / |P_k | G_k|`` for each id in
    ``object_ids`` (1 when the object is absent from both, as the DAVIS toolkit scores it). Pixels with
    ground truth 255 (DAVIS's void) are left out."""
    keep = gt != IGNORE
    out = []
    for k in object_ids:
        p, g = (pred == k) & keep, (gt == k) & keep
        union = np.logical_or(p, g).sum()
        out.append(1.0 if union == 0 else float(np.logical_and(p, g).sum() / union))
    return out
