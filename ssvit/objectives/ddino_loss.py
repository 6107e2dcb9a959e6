"""EsViT's view + region-level self-distillation loss (Li et al., "Efficient Self-supervised Vision
Transformers for Representation Learning", ICLR 2022; microsoft/esvit ``main_esvit.py``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..utils.distributed import all_reduce_sum, world_size
from .dino_loss import DINOLoss
from ..utils.precision import fp32_island


def match_regions(student_fea: torch.Tensor, teacher_fea: torch.Tensor) -> torch.Tensor:
    """Index of the most similar teacher region for every student region (cosine, hard argmax).

    ``student_fea`` (B, N_s, C), ``teacher_fea`` (B, N_t, C) -> int64 (B, N_s) in ``[0, N_t)``.
    """
    sim = torch.matmul(F.normalize(student_fea, p=2, dim=-1), F.normalize(teacher_fea, p=2, dim=-1).transpose(1, 2))
    return sim.max(dim=2)[1]


class DDINOLoss(DINOLoss):
    """EsViT's ``DDINOLoss``: DINO's view-level loss plus a region-level term on matched tokens.

    Drop-in for the original: same constructor parameters and order, ``forward(student_output,
    teacher_output, epoch, targets_mixup=None)`` (mixup targets are ignored, as the original
    does), buffers ``center`` and ``center_grid`` (1, out_dim), works with no process group.

    ``student_output`` / ``teacher_output`` are EsViT's dense 4-tuples
    ``(cls_logits (ncrops*B, K), region_logits (sum_c B*N_c, K), region_features (sum_c B*N_c, C),
    npatch [N per resolution group])``; the teacher's hold the 2 global crops only. Rows are
    crop-major, then image, then token. For each cross-view pair (teacher global i, student v != i)
    the term is ``0.5 * CE(view) + 0.5 * mean over student tokens of CE(region)``, where each
    student token is distilled from the teacher token of view i whose *backbone feature* is most
    cosine-similar (``match_regions``). Returns the mean over the ``2*ncrops - 2`` pairs; both
    centers are then updated from the teacher logits (all-reduced under DDP).

    QUIRK (kept): student tokens are split assuming the first two crops have ``npatch[0]`` tokens
    and every other crop ``npatch[1]`` -- a single local-crop size (checked: a clear error
    otherwise, where the original would crash or mis-split).
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__(out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs,
                         student_temp, center_momentum)
        self.register_buffer("center_grid", torch.zeros(1, out_dim))

    def split_sizes(self, s_npatch: Sequence[int]) -> list[int]:
        """Tokens per student crop: two globals with ``npatch[0]``, the rest with ``npatch[1]``."""
        n_groups_needed = 1 if self.ncrops == 2 else 2
        if len(s_npatch) != n_groups_needed:
            raise ValueError(
                f"DDINOLoss expects the student crops in {n_groups_needed} resolution group(s) (globals first, "
                f"then one local size), got token counts per group {list(s_npatch)}; EsViT's region loss "
                "supports a single --local_crops_size")
        return [s_npatch[0]] * 2 + [s_npatch[-1]] * (self.ncrops - 2)

    @fp32_island
    def forward(self, student_output, teacher_output, epoch: int, targets_mixup=None) -> torch.Tensor:
        s_cls_out, s_region_out, s_fea, s_npatch = student_output
        t_cls_out, t_region_out, t_fea, t_npatch = teacher_output

        temp = self.teacher_temp_schedule[epoch]
        t_cls = F.softmax((t_cls_out - self.center) / temp, dim=-1).detach().chunk(2)
        t_region = F.softmax((t_region_out - self.center_grid) / temp, dim=-1).detach().chunk(2)
        t_fea = t_fea.chunk(2)
        n_t = t_npatch[0]
        batch = t_region[0].shape[0] // n_t

        s_cls = (s_cls_out / self.student_temp).chunk(self.ncrops)
        sizes = self.split_sizes(s_npatch)
        rows = [n * batch for n in sizes]
        if sum(rows) != s_region_out.shape[0]:
            raise ValueError(f"student region rows {s_region_out.shape[0]} != sum of tokens x batch {sum(rows)}")
        s_region = torch.split(s_region_out / self.student_temp, rows, dim=0)
        s_fea = torch.split(s_fea, rows, dim=0)

        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(t_cls):
            t_region_i = t_region[iq].view(batch, n_t, -1)
            t_fea_i = t_fea[iq].view(batch, n_t, -1)
            for v in range(len(s_cls)):
                if v == iq:
                    continue  # teacher and student see the same view
                loss = 0.5 * torch.sum(-q * F.log_softmax(s_cls[v], dim=-1), dim=-1)
                s_region_v = s_region[v].view(batch, sizes[v], -1)
                idx = match_regions(s_fea[v].view(batch, sizes[v], -1), t_fea_i)
                target = torch.gather(t_region_i, 1, idx.unsqueeze(2).expand(-1, -1, t_region_i.size(2)))
                loss_grid = torch.sum(-target * F.log_softmax(s_region_v, dim=-1), dim=-1).mean(-1)
                loss = loss + 0.5 * loss_grid
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(t_cls_out, t_region_out)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor, teacher_grid_output: torch.Tensor) -> None:
        super().update_center(teacher_output)
        grid_center = all_reduce_sum(torch.sum(teacher_grid_output, dim=0, keepdim=True))
        grid_center = grid_center / (len(teacher_grid_output) * world_size())
        self.center_grid = self.center_grid * self.center_momentum + grid_center * (1 - self.center_momentum)
