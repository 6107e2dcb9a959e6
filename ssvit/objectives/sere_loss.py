"""SERE's self-relation losses (Li et al., TPAMI 2023; MCG-NKU/SERE ``main_sere.py``).

Both are cross-entropies between softmax-normalised relations: the teacher's sharpened by a
temperature, the student's at temperature 1, averaged over every (teacher view, other student
view) pair. Relations come from ``ssvit.models.sere``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.sere import sampling
from ..utils.precision import fp32_island


def _ce(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    return torch.sum(-teacher_probs * F.log_softmax(student_logits, dim=-1), dim=-1).mean()


class PixelSERELoss(nn.Module):
    """Spatial self-relation loss (``sere_loss_pixel``), ``temperature`` = ``--temperature_pixel`` (0.5).

    ``forward(student_output, teacher_output, student_output_local, teacher_output_global,
    grid_local, grid_global, ncrops, ncrops_local)``:
    ``student_output`` / ``teacher_output`` (2B, h, s^2, s^2) overlap-aligned global relations;
    ``student_output_local`` (L*B, h, n, n) or None; ``teacher_output_global`` (2B, h, N, N)
    unaligned teacher relations; ``grid_local`` / ``grid_global`` lists of 2L grids (B, 6, 6, 2).
    Terms: the 2 cross-view global pairs, then for each global crop iq and local crop v the local
    student relation and the teacher's relation of iq, both resampled to their overlap.
    Returns the mean over the 2 + 2L terms (0-dim).
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = temperature

    @fp32_island
    def forward(self, student_output, teacher_output, student_output_local: Optional[torch.Tensor],
                teacher_output_global, grid_local: Optional[Sequence[torch.Tensor]],
                grid_global: Optional[Sequence[torch.Tensor]], ncrops: int = 2, ncrops_local: int = 0):
        student_out = student_output.chunk(ncrops)
        teacher_out = (teacher_output / self.temperature).detach().chunk(ncrops)
        total, n = 0, 0
        for iq, q in enumerate(teacher_out):
            q = F.softmax(q, dim=-1)
            for v in range(len(student_out)):
                if v == iq:
                    continue
                total += _ce(q, student_out[v])
                n += 1
        if student_output_local is not None:
            student_local = student_output_local.chunk(ncrops_local)
            teacher_global = (teacher_output_global / self.temperature).detach().chunk(ncrops)
            for iq, q in enumerate(teacher_global):
                for v in range(len(student_local)):
                    local_crop = sampling(student_local[v], grid_local[iq * ncrops_local + v])
                    global_crop = sampling(q, grid_global[iq * ncrops_local + v])
                    total += _ce(F.softmax(global_crop, dim=-1), local_crop)
                    n += 1
        return total / n


class ChannelSERELoss(nn.Module):
    """Channel self-relation loss (``sere_loss_channel``), ``temperature`` = ``--temperature_channel`` (0.1).

    ``forward(student_output, teacher_output, student_output_local, ncrops, ncrops_local)``:
    relations (2B, C, C) for the global crops, (L*B, C, C) or None for the local ones (no
    alignment needed). Each teacher global crop is paired with the other global crop and every
    local crop; returns the mean over the 2 + 2L terms.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    @fp32_island
    def forward(self, student_output, teacher_output, student_output_local: Optional[torch.Tensor],
                ncrops: int = 2, ncrops_local: int = 0):
        student_out = student_output.chunk(ncrops)
        student_local = student_output_local.chunk(ncrops_local) if student_output_local is not None else ()
        teacher_out = F.softmax(teacher_output / self.temperature, dim=-1).detach().chunk(ncrops)
        total, n = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                total += _ce(q, student_out[v])
                n += 1
            for s in student_local:
                total += _ce(q, s)
                n += 1
        return total / n
