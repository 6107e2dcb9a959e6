"""DINO self-distillation loss (Caron et al., ICCV 2021; facebookresearch/dino ``main_dino.py``)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .schedules import teacher_temp_schedule
from ..utils.distributed import all_reduce_sum, world_size
from ..utils.precision import fp32_island


CENTERINGS = ("centering", "sinkhorn_knopp")


@torch.no_grad()
def sinkhorn_knopp(teacher_output: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """DINOv2's teacher targets (``dinov2/loss/dino_clstoken_loss.py``, ``sinkhorn_knopp_teacher``):
    ``Q = exp(t / temp)`` over (B, K) teacher logits, then ``n_iterations`` alternating normalisations
    so that every prototype gets 1/K of the mass and every sample 1/B -- summed over all ranks -- and
    rows rescaled to sum to 1 (B = the global batch). Returns (B, K) row-stochastic targets.

    exp is taken after subtracting the global maximum: the normalisations cancel the constant, and
    a low temperature no longer overflows (DINOv2 exponentiates directly).
    """
    t = teacher_output.float() / temp
    top = t.max()
    if world_size() > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(t - top).t()  # (K, B), as the paper's notation
    n_samples = q.shape[1] * world_size()
    n_protos = q.shape[0]
    q /= all_reduce_sum(torch.sum(q))
    for _ in range(n_iterations):
        q /= all_reduce_sum(torch.sum(q, dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= n_protos
        q /= torch.sum(q, dim=0, keepdim=True)  # each sample: total mass 1/B (samples are local)
        q /= n_samples
    q *= n_samples
    return q.t()


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over crop pairs.

    Drop-in for the original: same constructor parameters and order, ``forward(student_output,
    teacher_output, epoch)``, buffer ``center`` (1, out_dim).

    Shapes: ``student_output`` (ncrops*B, K) crop-major; ``teacher_output`` (2*B, K) for the two
    global crops. Returns a 0-dim loss averaged over the ``2*ncrops - 2`` cross-view pairs (batch
    mean per pair first). The center is updated *after* the loss, with the teacher logits of the
    whole global batch (all-reduced under DDP) -- so the loss at step t uses the EMA through t-1.

    ``targets_mixup``: EsViT's mixup variant (``--use_mixup``). ``None`` / empty gives DINO's loss;
    otherwise a list with one (B, B) soft-target matrix per student crop, and each pair's per-row
    loss is, literally as EsViT, ``-sum(T_v * (q_i @ log_softmax(s_v).T), dim=-1)`` (QUIRK: rows
    of the product index teacher images, columns student images).

    ``centering="sinkhorn_knopp"`` (DINOv2's option): the teacher targets are ``sinkhorn_knopp``'s
    balanced assignment of the 2B global-crop logits at the scheduled temperature instead of
    ``softmax((t - center) / temp)``; the centre buffer is then left unchanged.
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9, centering: str = "centering", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"--centering must be one of {', '.join(CENTERINGS)}, got {centering!r}")
        self.centering, self.sinkhorn_iterations = centering, sinkhorn_iterations
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)

    @fp32_island
    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int,
                targets_mixup=None) -> torch.Tensor:
        mixup = targets_mixup is not None and len(targets_mixup) > 0
        if mixup and len(targets_mixup) != self.ncrops:
            raise ValueError(f"targets_mixup needs one target matrix per crop ({self.ncrops}), got {len(targets_mixup)}")
        student_out = (student_output / self.student_temp).chunk(self.ncrops)

        temp = self.teacher_temp_schedule[epoch]
        if self.centering == "sinkhorn_knopp":
            teacher_out = sinkhorn_knopp(teacher_output.detach(), temp, self.sinkhorn_iterations)
        else:
            teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)

        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue  # teacher and student see the same view
                if mixup:
                    loss = -torch.sum(targets_mixup[v] * torch.mm(q, F.log_softmax(student_out[v], dim=-1).t()), dim=-1)
                else:
                    loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        if self.centering == "centering":  # Sinkhorn-Knopp needs no running centre (DINOv2 keeps it unchanged)
            self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = all_reduce_sum(batch_center)
        batch_center = batch_center / (len(teacher_output) * world_size())
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
