"""Shared behaviour of the self-distillation methods (DINO, iBOT, SERE, EsViT): DINO's schedules,
teacher-temperature and crop checks, last-layer freezing, the collapse monitors, and DINOv2's KoLeo
term."""
from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch

from ..config import bool_flag
from ..engine.schedules import linear_scaled_cosine
from ..engine.task import Schedules, TrainingTask
from ..objectives import KoLeoLoss


def add_dino_args(parser: argparse.ArgumentParser) -> None:
    """``main_dino.py``'s flags of the head, the EMA teacher and the multi-crop (the engine's own --
    ``--lr``, ``--epochs``, ... -- are ``ssvit.config.add_engine_args``), with ssvit's head-shape and
    local-crop-size additions."""
    p = parser.add_argument_group("DINO family (main_dino.py)")
    p.add_argument("--out_dim", default=65536, type=int)
    p.add_argument("--norm_last_layer", default=True, type=bool_flag)
    p.add_argument("--momentum_teacher", default=0.996, type=float)
    p.add_argument("--use_bn_in_head", default=False, type=bool_flag)
    p.add_argument("--warmup_teacher_temp", default=0.04, type=float)
    p.add_argument("--teacher_temp", default=0.04, type=float)
    p.add_argument("--warmup_teacher_temp_epochs", default=0, type=int)
    p.add_argument("--freeze_last_layer", default=1, type=int)
    p.add_argument("--global_crops_scale", type=float, nargs="+", default=(0.4, 1.0))
    p.add_argument("--local_crops_number", type=int, default=8)
    p.add_argument("--local_crops_scale", type=float, nargs="+", default=(0.05, 0.4))
    p.add_argument("--local_crops_size", default=96, type=int)
    p.add_argument("--head_hidden_dim", default=2048, type=int, help="projection head MLP width (original: 2048)")
    p.add_argument("--head_bottleneck_dim", default=256, type=int, help="projection head bottleneck (original: 256)")
    p.add_argument("--head_nlayers", default=3, type=int, help="projection head MLP depth (original: 3)")


class DINOFamily(TrainingTask):
    """Shared behaviour of the self-distillation methods (DINO, iBOT, SERE, EsViT): DINO's flags
    (``add_dino_args``), teacher temperature checks, multi-crop sizes, last-layer freezing, and DINOv2's
    KoLeo term for the methods that add ``--koleo_loss_weight`` (``add_koleo_args``) and call
    ``with_koleo``."""

    @classmethod
    def add_args(cls, parser):
        add_dino_args(parser)

    @classmethod
    def check_args(cls, args):
        check_self_distillation_args(args)

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.freeze_last_layer = args.freeze_last_layer
        self.koleo_loss_weight = getattr(args, "koleo_loss_weight", 0.0)
        if self.koleo_loss_weight:
            self.koleo = KoLeoLoss()

    def with_koleo(self, loss: torch.Tensor, extra: dict, student_global_cls: torch.Tensor,
                   n_global: int) -> tuple[torch.Tensor, dict]:
        """``loss + koleo_loss_weight * sum_k KoLeo(student CLS of global crop k)`` (DINOv2: the
        student backbone's CLS tokens, before the head, each global crop's batch separately);
        ``student_global_cls`` is (n_global * B, D), crop-major. Logs ``koleo_loss``, and the
        method's own loss under ``loss`` unless ``extra`` already names it. Weight 0: unchanged."""
        if not self.koleo_loss_weight:
            return loss, extra
        koleo = sum(self.koleo(f) for f in student_global_cls.chunk(n_global))
        extra = {"loss": loss.item(), **extra, "koleo_loss": koleo.item()}
        return loss + self.koleo_loss_weight * koleo, extra

    def schedules(self, args: argparse.Namespace, niter_per_ep: int, bs_total: int) -> Schedules:
        """DINO's: cosine lr (x total batch / 256, warm-up), cosine weight decay, cosine momentum to 1."""
        return linear_scaled_cosine(args, niter_per_ep, bs_total,
                                    args.momentum_teacher if self.has_ema_teacher else None)

    def after_backward(self, epoch: int) -> None:
        from ..utils.params import cancel_gradients_last_layer
        cancel_gradients_last_layer(epoch, self.student, self.freeze_last_layer)

    # ----- collapse monitors ------------------------------------------------------------------
    def observe_teacher(self, cls_logits: torch.Tensor, epoch: int) -> None:
        """Called by ``training_step`` with the teacher's view-level logits (N, K), before the loss
        moves the center; accumulates the epoch's collapse figures."""
        if not hasattr(self, "_monitor"):
            from .collapse import CollapseMonitor
            self._monitor = CollapseMonitor()
        self._monitor.observe(cls_logits, self.criterion.center, float(self.criterion.teacher_temp_schedule[epoch]))

    @torch.no_grad()
    def teacher_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) teacher backbone embedding (the CLS token for ViTs, pooled features otherwise)."""
        out = self.teacher.backbone(images)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out[:, 0] if out.ndim == 3 else out

    def epoch_stats(self, last_batch: Any = None) -> dict[str, float]:
        """The epoch's collapse figures (``teacher_entropy``, ``teacher_kl_uniform``, ``embed_std``)."""
        if not hasattr(self, "_monitor"):
            return {}
        from .collapse import embedding_std, first_global_crop
        stats = self._monitor.distribution_stats()
        images = first_global_crop(last_batch)
        if images is not None and images.shape[0] > 1:
            was_training = self.teacher.training
            self.teacher.eval()
            feats = self.teacher_embedding(images)
            self.teacher.train(was_training)
            stats["embed_std"] = embedding_std(feats)
            stats["embed_dim"] = feats.shape[-1]
        return stats

    def epoch_warnings(self, stats: dict) -> list[str]:
        from .collapse import collapse_warnings
        return collapse_warnings(stats)


def add_koleo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--koleo_loss_weight", default=0.0, type=float,
                        help="DINOv2's KoLeo regulariser on the student's backbone CLS tokens of each global "
                             "crop, times this weight (DINOv2: 0.1); 0 = the method's loss alone")


def check_koleo_args(args: argparse.Namespace) -> None:
    if args.koleo_loss_weight < 0:
        raise ValueError(f"--koleo_loss_weight must be >= 0, got {args.koleo_loss_weight}")
    if args.koleo_loss_weight and args.batch_size_per_gpu < 2:
        raise ValueError("--koleo_loss_weight needs --batch_size_per_gpu >= 2 (a nearest neighbour per crop)")


def check_self_distillation_args(args: argparse.Namespace, patch_rule: bool = True) -> None:
    """Flags of the self-distillation methods: EMA momentum, teacher temperatures (a warm-up longer
    than the run is clamped, with a warning), and crops that
    are at least -- and a multiple of -- the ViT patch (``patch_rule``; multi-stage backbones take
    any crop size)."""
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)
    need(0 <= args.momentum_teacher <= 1, f"--momentum_teacher must be in [0, 1], got {args.momentum_teacher}")
    need(args.teacher_temp > 0 and args.warmup_teacher_temp > 0, "teacher temperatures must be > 0")
    need(args.warmup_teacher_temp_epochs >= 0, "warm-up epochs must be >= 0")
    if args.warmup_teacher_temp_epochs > args.epochs:
        warnings.warn(f"--warmup_teacher_temp_epochs {args.warmup_teacher_temp_epochs} exceeds --epochs "
                      f"{args.epochs}: clamped to {args.epochs}")
        args.warmup_teacher_temp_epochs = args.epochs
    for name in ("global_crops_scale", "local_crops_scale"):
        v = getattr(args, name)
        need(len(v) == 2 and 0 < v[0] <= v[1] <= 1, f"--{name} takes two values 0 < min <= max <= 1, got {list(v)}")
    if not patch_rule:
        return
    for name in ("global_crops_size", "local_crops_size"):
        value = getattr(args, name)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            need(v >= args.patch_size, f"--{name} ({v}) must be at least --patch_size ({args.patch_size})")
            need(v % args.patch_size == 0, f"--{name} ({v}) must be a multiple of --patch_size ({args.patch_size}): "
                 "the patch embedding would drop the remaining pixels")
