"""Samplers that can start part-way through an epoch (exact mid-epoch resume): DINO's
``DistributedSampler`` order and DeiT's repeated-augmentation order."""
from __future__ import annotations

import math

import torch
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


class RepeatedAugSampler(torch.utils.data.Sampler):
    """DeiT's ``RASampler`` (used by SiT-v1, ``--repeated-aug``): the epoch's permutation
    (``randperm`` seeded by the epoch alone, as the original) with every index repeated 3 times
    consecutively, padded to a multiple of the world size, strided by rank, then truncated to
    ``floor(len // 256 * 256 / W)`` samples per rank (QUIRK kept: an epoch sees about a third of the
    distinct images, each three times; fewer than 256 images give an empty epoch).

    Items are ``(index, draw)`` pairs: ``TransformedDataset`` mixes ``draw`` into the sample's seed,
    so the three repeats get different augmentations, as the original's unseeded transforms do.
    ``set_start(n)`` skips the first ``n`` items of this rank's share (mid-epoch resume)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, repeats: int = 3):
        self.dataset, self.num_replicas, self.rank, self.shuffle, self.repeats = \
            dataset, num_replicas, rank, shuffle, repeats
        self.epoch, self.start = 0, 0
        n = len(dataset)
        self.num_repeated = int(math.ceil(n * float(repeats) / num_replicas))
        self.total_size = self.num_repeated * num_replicas
        self.num_samples = int(math.floor(n // 256 * 256 / num_replicas))  # what one rank reads per epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def set_start(self, n: int) -> None:
        self.start = n

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.epoch)
        n = len(self.dataset)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        items = [(ele, i) for ele in order for i in range(self.repeats)]
        pad = self.total_size - len(items)
        items += [(ele, i + self.repeats) for ele, i in items[:pad]]  # padded repeats: further draws
        items = items[self.rank:self.total_size:self.num_replicas]
        return iter(items[:self.num_samples][self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def repeated_aug_sampler(dataset, num_replicas: int, rank: int, flag: str = "--repeated_aug",
                         off: str = "--repeated_aug false") -> RepeatedAugSampler:
    """A ``RepeatedAugSampler``, or a one-line error when the dataset is too small to give any sample."""
    sampler = RepeatedAugSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True)
    if sampler.num_samples == 0:
        raise ValueError(f"{flag} reads floor(N // 256 * 256 / world size) images per epoch: {len(dataset)} images "
                         f"x {num_replicas} processes give none (use {off})")
    return sampler
