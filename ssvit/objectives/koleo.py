"""KoLeo regulariser (Sablayrolles et al., ICLR 2019 "Spreading vectors for similarity search"; as used
by DINOv2, ``dinov2/loss/koleo_loss.py``).

``-mean_i log(||x_i - x_nn(i)|| + eps)`` over the L2-normalised rows of a batch, where ``nn(i)`` is
the row with the largest inner product with row i (itself excluded): pushes each feature away from its
nearest neighbour, spreading the batch uniformly over the sphere -- what k-NN retrieval wants.
DINOv2 applies it to the student's CLS tokens (before the head) of each global crop separately,
weighted 0.1, in float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class KoLeoLoss(nn.Module):
    """Input (B, D) features, B >= 2; returns a 0-dim loss (lower = more spread)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[0] < 2:
            raise ValueError(f"KoLeo needs at least 2 rows per batch, got {features.shape[0]}")
        x = F.normalize(features.float(), p=2, dim=-1, eps=self.eps)
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-1.0)  # DINOv2's trick: a row is never its own neighbour (dots >= -1)
            nearest = dots.argmax(dim=1)
        # nn.PairwiseDistance(2, eps): ||x - y + eps||
        distances = torch.linalg.vector_norm(x - x[nearest] + self.eps, dim=-1)
        return -torch.log(distances + self.eps).mean()
