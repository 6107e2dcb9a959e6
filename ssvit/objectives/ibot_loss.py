"""iBOT loss: CLS self-distillation across views + masked patch-token distillation within a view.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer" (ICLR 2022), bytedance/ibot
``main_ibot.py``; with SERE's gradient-accumulation extension (MCG-NKU/SERE ``main_sere.py``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.distributed import all_reduce_sum, world_size
from .schedules import patch_temp_schedule, teacher_temp_schedule
from ..utils.precision import fp32_island


class iBOTLoss(nn.Module):
    """Drop-in for the original ``iBOTLoss`` (same parameters, order, buffers and outputs).

    ``forward(student_output, teacher_output, student_local_cls, student_mask, epoch, it=None)``:

    * ``student_output`` = (cls (G*B, K), patch (G*B, N, K2)) of the *masked* global crops;
    * ``teacher_output`` = (cls (G*B, K), patch (G*B, N, K2)) of the unmasked global crops;
    * ``student_local_cls`` (L*B, K) or None; ``student_mask`` list of bool masks (B, h, w), one
      per crop (only the first G are read); all crop-major.

    Returns ``dict(cls=L1, patch=L2, loss=L1+L2)``. L1 averages CE(teacher crop q, student crop v)
    over all v != q (local crops included); L2 averages over the G global crops the per-image mean
    over masked tokens of CE(teacher patch, student patch) of the *same* crop (QUIRK: an image with an
    empty mask contributes 0 to the batch mean). Buffers ``center`` (1, K) and ``center2`` (1, 1, K2)
    are updated after the loss (patch center from the mean over all tokens).

    ``accum_iter`` > 1 (SERE): batch sums accumulate in ``center_accum`` / ``center2_accum`` and the
    centers move only every ``accum_iter`` calls (``it`` = iteration in the epoch). Those two buffers
    exist only when ``accum_iter > 1`` or ``accum_buffers=True`` (SERE's checkpoint layout).
    """

    def __init__(self, out_dim: int, patch_out_dim: int, ngcrops: int, nlcrops: int, warmup_teacher_temp: float,
                 teacher_temp: float, warmup_teacher_temp2: float, teacher_temp2: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9, center_momentum2: float = 0.9, lambda1: float = 1.0,
                 lambda2: float = 1.0, mim_start_epoch: int = 0, accum_iter: int = 1,
                 accum_buffers: Optional[bool] = None):
        super().__init__()
        if accum_iter < 1:
            raise ValueError(f"accum_iter must be >= 1, got {accum_iter}")
        self.student_temp = student_temp
        self.center_momentum, self.center_momentum2 = center_momentum, center_momentum2
        self.ngcrops, self.nlcrops, self.ncrops = ngcrops, nlcrops, ngcrops + nlcrops
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.accum_iter = accum_iter
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.accumulates = accum_iter > 1 if accum_buffers is None else bool(accum_buffers)
        if self.accumulates:
            self.register_buffer("center_accum", torch.zeros(1, out_dim))
            self.register_buffer("center2_accum", torch.zeros(1, 1, patch_out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(warmup_teacher_temp, teacher_temp,
                                                           warmup_teacher_temp_epochs, nepochs)
        self.teacher_temp2_schedule = patch_temp_schedule(warmup_teacher_temp2, teacher_temp2,
                                                          warmup_teacher_temp_epochs, nepochs, mim_start_epoch)

    @fp32_island
    def forward(self, student_output, teacher_output, student_local_cls: Optional[torch.Tensor],
                student_mask: Sequence[torch.Tensor], epoch: int, it: Optional[int] = None) -> dict:
        student_cls, student_patch = student_output
        teacher_cls, teacher_patch = teacher_output
        if student_local_cls is not None:
            student_cls = torch.cat([student_cls, student_local_cls])

        student_cls_c = (student_cls / self.student_temp).chunk(self.ncrops)
        student_patch_c = (student_patch / self.student_temp).chunk(self.ngcrops)

        temp = self.teacher_temp_schedule[epoch]
        temp2 = self.teacher_temp2_schedule[epoch]
        teacher_cls_c = F.softmax((teacher_cls - self.center) / temp, dim=-1).detach().chunk(self.ngcrops)
        teacher_patch_c = F.softmax((teacher_patch - self.center2) / temp2, dim=-1).detach().chunk(self.ngcrops)

        total_loss1, n_loss_terms1 = 0, 0
        total_loss2, n_loss_terms2 = 0, 0
        for q in range(len(teacher_cls_c)):
            for v in range(len(student_cls_c)):
                if v == q:
                    loss2 = torch.sum(-teacher_patch_c[q] * F.log_softmax(student_patch_c[v], dim=-1), dim=-1)
                    mask = student_mask[v].flatten(-2, -1)
                    loss2 = torch.sum(loss2 * mask.float(), dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
                    total_loss2 += loss2.mean()
                    n_loss_terms2 += 1
                else:
                    loss1 = torch.sum(-teacher_cls_c[q] * F.log_softmax(student_cls_c[v], dim=-1), dim=-1)
                    total_loss1 += loss1.mean()
                    n_loss_terms1 += 1
        total_loss1 = total_loss1 / n_loss_terms1 * self.lambda1
        total_loss2 = total_loss2 / n_loss_terms2 * self.lambda2
        out = dict(cls=total_loss1, patch=total_loss2, loss=total_loss1 + total_loss2)

        if self.accumulates:
            self.update_center_accum(teacher_cls, teacher_patch)
            if it is None or (it + 1) % self.accum_iter == 0:
                self.update_center_from_accum(len(teacher_cls))
        else:
            self.update_center(teacher_cls, teacher_patch)
        return out

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        cls_center = all_reduce_sum(torch.sum(teacher_cls, dim=0, keepdim=True))
        cls_center = cls_center / (len(teacher_cls) * world_size())
        self.center = self.center * self.center_momentum + cls_center * (1 - self.center_momentum)
        patch_center = all_reduce_sum(torch.sum(teacher_patch.mean(1), dim=0, keepdim=True))
        patch_center = patch_center / (len(teacher_patch) * world_size())
        self.center2 = self.center2 * self.center_momentum2 + patch_center * (1 - self.center_momentum2)

    @torch.no_grad()
    def update_center_accum(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        self.center_accum = self.center_accum + all_reduce_sum(torch.sum(teacher_cls, dim=0, keepdim=True))
        self.center2_accum = self.center2_accum + all_reduce_sum(
            torch.sum(teacher_patch.mean(1), dim=0, keepdim=True))

    @torch.no_grad()
    def update_center_from_accum(self, batch_rows: int) -> None:
        denom = batch_rows * world_size() * self.accum_iter
        self.center = self.center * self.center_momentum + self.center_accum / denom * (1 - self.center_momentum)
        self.center2 = self.center2 * self.center_momentum2 + self.center2_accum / denom * (1 - self.center_momentum2)
        self.center_accum.fill_(0)
        self.center2_accum.fill_(0)
