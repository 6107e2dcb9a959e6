"""EsViT's attention entropy analysis (microsoft/esvit ``analyze_models.py --vis_entropy``).

For every image, every block's attention (first window / image of the leading axis) gives each head
the entropy ``-sum_k a_k log2 a_k`` of a query's attention row, averaged over queries 0..48; the
per-block, per-head values are averaged over images with EsViT's running mean.

Deliberate differences: ``0 log 0`` counts as 0 (the original's ``a * log2(a)`` turns exact zeros,
e.g. ViL's dense maps outside each window, into NaN), and the query count is clamped to the
queries a block has (the original indexes 49 queries and fails on smaller windows).
"""
from __future__ import annotations

from typing import Sequence

import torch

NUM_QUERIES = 49  # EsViT: queries 0..48 (one 7x7 window)


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of attention rows: (..., Nk) probabilities -> (...); ``0 log 0 = 0``."""
    attn = attn.float()
    return -torch.where(attn > 0, attn * torch.log2(attn), torch.zeros_like(attn)).sum(-1)


def block_entropy(attn: torch.Tensor, num_queries: int = NUM_QUERIES) -> torch.Tensor:
    """Per-head entropy of one block, averaged over queries ``0 .. min(num_queries, Nq) - 1`` of the
    first window: ``attn`` (B*nW, heads, Nq, Nk) or (heads, Nq, Nk) -> (heads,)."""
    if attn.ndim == 3:
        attn = attn.unsqueeze(0)
    if attn.ndim != 4:
        raise ValueError(f"expected attention (B*nW, heads, Nq, Nk), got shape {tuple(attn.shape)}")
    if num_queries < 1:
        raise ValueError(f"num_queries must be positive, got {num_queries}")
    return attention_entropy(attn[0, :, :min(num_queries, attn.shape[2])]).mean(dim=1)


class EntropyMeter:
    """Running mean over images of per-block, per-head entropies (EsViT's incremental mean
    ``avg = (x + (count - 1) * avg) / count``).

    ``update(attentions)`` takes one image's list of block attentions (``get_all_selfattention``);
    ``values()`` -> one list of per-head floats per block.
    """

    def __init__(self, num_queries: int = NUM_QUERIES):
        self.num_queries = num_queries
        self.count = 0
        self.avg: list[torch.Tensor] = []

    def update(self, attentions: Sequence[torch.Tensor]) -> None:
        ent = [block_entropy(a, self.num_queries).double().cpu() for a in attentions]
        if self.count and len(ent) != len(self.avg):
            raise ValueError(f"{len(ent)} attention blocks, earlier images had {len(self.avg)}")
        self.count += 1
        if self.count == 1:
            self.avg = ent
        else:
            self.avg = [(e + (self.count - 1) * m) / self.count for e, m in zip(ent, self.avg)]

    def values(self) -> list[list[float]]:
        return [m.tolist() for m in self.avg]
