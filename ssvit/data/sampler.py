"""A ``DistributedSampler`` that can start part-way through an epoch (exact mid-epoch resume)."""
from __future__ import annotations

from torch.utils.data import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """Same order as ``torch.utils.data.DistributedSampler`` (seed + epoch permutation, padding,
    rank striding); ``set_start(n)`` skips the first ``n`` indices of this rank's share, i.e. the
    samples already consumed before a checkpoint. The skip applies to the current epoch only."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def set_start(self, n: int) -> None:
        self.start = n

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
