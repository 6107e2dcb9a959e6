"""Collapse monitors for the EMA-teacher (DINO-family) methods, logged once per epoch.

DINO (Caron et al. 2021, §5.3 / Fig. 7) names the two ways self-distillation collapses: every
image gets the *same* distribution (one dimension dominates: the mean teacher distribution is far
from uniform, each sample's entropy near 0) or every output is *uniform* (per-sample entropy near
log K). A collapsed backbone also stops varying across images. Three figures show it:

* ``teacher_entropy``: mean entropy (nats) of the centred, sharpened teacher distribution;
* ``teacher_kl_uniform``: KL(mean teacher distribution || uniform) (nats);
* ``embed_std``: mean over dimensions of the per-dimension std of the L2-normalised teacher
  backbone embedding (about 1/sqrt(D) when healthy, 0 when collapsed).

The distribution figures accumulate over the epoch on the device (no host sync per step) and are
summed over ranks; the embedding figure uses the epoch's last batch.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..utils.distributed import collective_device, is_dist


class CollapseMonitor:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.entropy_sum: Optional[torch.Tensor] = None
        self.prob_sum: Optional[torch.Tensor] = None
        self.rows = 0

    @torch.no_grad()
    def observe(self, logits: torch.Tensor, center: torch.Tensor, temp: float) -> None:
        """``logits`` (N, K) teacher head outputs, ``center`` (1, K), ``temp`` the teacher temperature."""
        logp = F.log_softmax((logits.float() - center.float()) / temp, dim=-1)
        p = logp.exp()
        ent = -(p * logp).sum()
        if self.entropy_sum is None:
            self.entropy_sum, self.prob_sum = ent, p.sum(0)
        else:
            self.entropy_sum += ent
            self.prob_sum += p.sum(0)
        self.rows += p.shape[0]

    @torch.no_grad()
    def distribution_stats(self) -> dict[str, float]:
        if self.entropy_sum is None:
            return {}
        t = torch.cat([self.entropy_sum.reshape(1), self.prob_sum,
                       torch.tensor([float(self.rows)], device=self.prob_sum.device)])
        if is_dist():
            dev = t.device
            t = t.to(collective_device())
            torch.distributed.all_reduce(t)
            t = t.to(dev)
        rows = float(t[-1])
        mean_p = t[1:-1] / rows
        k = mean_p.numel()
        kl = float((mean_p * (mean_p.clamp_min(1e-30) * k).log()).sum())
        self.reset()
        return {"teacher_entropy": float(t[0]) / rows, "teacher_kl_uniform": kl, "log_out_dim": math.log(k)}


@torch.no_grad()
def embedding_std(features: torch.Tensor) -> float:
    """Mean per-dimension std over the batch of L2-normalised (B, D) features (B >= 2)."""
    f = F.normalize(features.float().flatten(1), dim=-1)
    return float(f.std(dim=0).mean()) if f.shape[0] > 1 else float("nan")


def collapse_warnings(stats: dict[str, Any]) -> list[str]:
    """Messages for figures that show collapse (thresholds well past what healthy runs log)."""
    out = []
    log_k = stats.get("log_out_dim")
    if log_k and "teacher_entropy" in stats:
        if stats["teacher_entropy"] > 0.98 * log_k:
            out.append(f"teacher outputs are near uniform (entropy {stats['teacher_entropy']:.3f} of "
                       f"log K = {log_k:.3f}): collapse to the uniform distribution")
        if stats["teacher_kl_uniform"] > 0.9 * log_k:
            out.append(f"one output dimension dominates the teacher (KL to uniform {stats['teacher_kl_uniform']:.3f} "
                       f"of log K = {log_k:.3f}): collapse to a single prototype")
    d = stats.get("embed_dim")
    if d and "embed_std" in stats and stats["embed_std"] < 0.05 / math.sqrt(d):
        out.append(f"the teacher embedding barely varies across images (per-dimension std {stats['embed_std']:.2e}, "
                   f"healthy about {1 / math.sqrt(d):.2e}): collapsed representation")
    return out


def first_global_crop(batch: Any) -> Optional[torch.Tensor]:
    """The first global crop of a collated multi-crop batch (list of crops, (crops, masks), or
    SERE's dict with ``crops``)."""
    if isinstance(batch, dict):
        batch = batch.get("crops")
    while isinstance(batch, (list, tuple)) and batch and not isinstance(batch[0], torch.Tensor):
        batch = batch[0]
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    return batch if isinstance(batch, torch.Tensor) else None
