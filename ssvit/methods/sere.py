"""SERE (Li et al., TPAMI 2023): feature self-relation (spatial and channel) on top of iBOT
(MCG-NKU/SERE ``main_sere.py``) -- and, composed the same way, on top of DINO.

``ibot_sere`` = iBOT unchanged + ``alpha * L_pixel + beta * L_channel`` with the iBOT loss weighted
by ``(4 - alpha - beta) / 2``. ``dino_sere`` puts the same relation terms on DINO (no masking).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from ..data.overlap import DataAugmentationOverlap
from ..models.sere import SEREMultiCropWrapper, add_sere_heads
from ..objectives import ChannelSERELoss, PixelSERELoss
from ..engine.task import TrainingTask
from .dino import DINO
from .ibot import iBOT

_VIT_ARCHS = ("vit_", "deit_")


def add_sere_args(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--overlap_size", nargs="+", default=(13, 13), type=int,
                   help="side of the grids sampling the global views' overlap (queries, keys)")
    p.add_argument("--alpha", default=1.0, type=float, help="weight of the spatial self-relation loss")
    p.add_argument("--beta", default=1.0, type=float, help="weight of the channel self-relation loss")
    p.add_argument("--temperature_pixel", default=0.5, type=float)
    p.add_argument("--temperature_channel", default=0.1, type=float)
    p.add_argument("--sere_channel_sizes", nargs=2, default=(14, 6), type=float,
                   help="divisors of the channel relations for global / local crops (the original's fixed "
                        "14 and 6 = the token-grid sides at 224 / 96 px with patch 16)")


def check_sere_args(args: argparse.Namespace) -> None:
    if not args.arch.startswith(_VIT_ARCHS):
        raise ValueError(f"SERE supports ViT backbones only (vit_tiny/small/base/large), got --arch {args.arch}")
    if getattr(args, "global_crops_number", 2) != 2:
        raise ValueError("SERE needs exactly 2 global crops (--global_crops_number 2)")
    if not 1 <= len(args.overlap_size) <= 2 or min(args.overlap_size) < 2:
        raise ValueError(f"--overlap_size takes one or two sizes >= 2, got {list(args.overlap_size)}")
    if args.temperature_pixel <= 0 or args.temperature_channel <= 0:
        raise ValueError("SERE temperatures must be > 0")


def sere_param_groups(model: nn.Module) -> list[dict]:
    """SERE's ``get_params_groups`` (MCG-NKU/SERE ``utils.py``): unlike DINO/iBOT it *decays biases*
    ("add wd to all bias"); only 1-D non-bias parameters (norm weights) are exempt."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim != 1:
            regularized.append(param)
        else:
            not_regularized.append(param)
    return [{"params": regularized, "wd_scale": 1.0}, {"params": not_regularized, "weight_decay": 0.0}]


class SERETerms:
    """Mixin putting SERE on a base method (``class X(SERETerms, Base)``): relation heads on both
    backbones, the relation-returning wrapper, SERE's flags, the two relation losses and their
    combination with the base loss."""

    ddp_static_graph = True  # with 1-2 local crops the *_local heads stay unused (the original crashes under DDP there)

    def __init__(self, args):
        super().__init__(args)
        self.alpha, self.beta = args.alpha, args.beta
        self.pixel_loss = PixelSERELoss(args.temperature_pixel)
        self.channel_loss = ChannelSERELoss(args.temperature_channel)

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_sere_args(parser)

    @classmethod
    def check_args(cls, args):
        super().check_args(args)
        check_sere_args(args)

    def build_backbones(self, args):
        student, teacher = super().build_backbones(args)
        local = args.local_crops_number > 0
        return add_sere_heads(student, local), add_sere_heads(teacher, local)

    def wrap(self, backbone, head, args):
        return SEREMultiCropWrapper(backbone, head, args.sere_channel_sizes)

    def sere_transform(self, args):
        return DataAugmentationOverlap(args.global_crops_scale, args.local_crops_scale, 2, args.local_crops_number,
                                       args.overlap_size, args.global_crops_size, args.local_crops_size)

    def relation_losses(self, s_rel, t_rel, L: int, batch):
        (s_ch, s_px, s_ch_local, s_px_local), (t_ch, t_px, t_px_global) = s_rel, t_rel
        grid_local, grid_global = batch.get("grid_local"), batch.get("grid_global")
        loss_pixel = self.pixel_loss(s_px, t_px, s_px_local, t_px_global, grid_local, grid_global, 2, L)
        loss_channel = self.channel_loss(s_ch, t_ch, s_ch_local, 2, L)
        return loss_pixel, loss_channel

    def combine(self, base_loss, loss_pixel, loss_channel):
        return base_loss * (4 - self.alpha - self.beta) / 2.0 + loss_pixel * self.alpha + loss_channel * self.beta


class iBOTSERE(SERETerms, iBOT):
    """iBOT + SERE. Logged ``loss`` is the iBOT part (as the original); ``loss_attn`` = L_pixel,
    ``loss_attn_ffn`` = L_channel. The optimised loss is their weighted sum."""
    name = "ibot_sere"

    def loss_extra_kwargs(self, args):
        return dict(accum_iter=args.accum_iter, accum_buffers=True)  # SERE's ibot_loss layout

    def crop_transform(self, args):
        return self.sere_transform(args)

    def param_groups(self, student):
        return sere_param_groups(student)

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        crops, masks = batch["crops"], batch["masks"]
        grid1, grid2 = batch["grid1"], batch["grid2"]
        L = len(crops) - 2
        t = self.teacher(crops[:2], grid1, grid2, teacher=True)
        s = student(crops[:2], grid1, grid2, masks=masks[:2], teacher=False, return_backbone_feat=True)
        t_out, s_out, feats = t.head_out, s.head_out, s.backbone_feat
        s_local_cls = s_ch_local = s_px_local = None
        if L > 0:
            local = student(crops[2:], teacher=False)
            s_local_cls = local.head_out[0]
            s_ch_local, s_px_local = local.relation_channel_local, local.relation_pixel_local
        self.observe_teacher(t_out[0], epoch)
        all_loss = self.criterion(s_out, t_out, s_local_cls, masks, epoch, it=it)
        loss_pixel, loss_channel = self.relation_losses(
            (s.relation_channel, s.relation_pixel, s_ch_local, s_px_local),
            (t.relation_channel, t.relation_pixel, t.relation_pixel_global), L, batch)
        ibot_loss = all_loss.pop("loss")
        loss = self.combine(ibot_loss, loss_pixel, loss_channel)
        extra = {"loss": ibot_loss.item(), **{k: v.item() for k, v in all_loss.items()},
                 "loss_attn": loss_pixel.item(), "loss_attn_ffn": loss_channel.item(),
                 "acc": self.cls_agreement(t_out[0], s_out[0], 2)}
        return self.with_koleo(loss, extra, feats[:, 0], 2)


class DINOSERE(SERETerms, DINO):
    """DINO + SERE relations (no masking): ``(4 - alpha - beta)/2 * L_DINO + alpha * L_pixel +
    beta * L_channel``, DINO's heads, loss, flags and defaults; crops with overlap tracking.
    The student runs the global crops and the local crops in two calls (the relations of each
    group are needed); only ``--use_bn_in_head`` batch statistics can differ from one call."""
    name = "dino_sere"

    def build_transform(self, args):
        return self.sere_transform(args)

    build_batch_transform = TrainingTask.build_batch_transform  # SERE's crops carry overlap grids: per image only

    @classmethod
    def check_args(cls, args):
        super().check_args(args)
        if args.teacher_views != "crops":  # SERE's relations align the teacher's and student's global crops
            raise ValueError("--teacher_views clean is implemented for --method dino, not for --method dino_sere")

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        crops, grid1, grid2 = batch["crops"], batch["grid1"], batch["grid2"]
        L = len(crops) - 2
        t = self.teacher(crops[:2], grid1, grid2, teacher=True)
        s = student(crops[:2], grid1, grid2, teacher=False, return_backbone_feat=True)
        t_out, s_out, feats = t.head_out, s.head_out, s.backbone_feat
        s_ch_local = s_px_local = None
        if L > 0:
            local = student(crops[2:], teacher=False)
            s_ch_local, s_px_local = local.relation_channel_local, local.relation_pixel_local
            s_out = torch.cat([s_out, local.head_out])
        self.observe_teacher(t_out, epoch)
        dino = self.criterion(s_out, t_out, epoch)
        loss_pixel, loss_channel = self.relation_losses(
            (s.relation_channel, s.relation_pixel, s_ch_local, s_px_local),
            (t.relation_channel, t.relation_pixel, t.relation_pixel_global), L, batch)
        loss = self.combine(dino, loss_pixel, loss_channel)
        extra = {"loss": dino.item(), "loss_attn": loss_pixel.item(), "loss_attn_ffn": loss_channel.item()}
        return self.with_koleo(loss, extra, feats, 2)
