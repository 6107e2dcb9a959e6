"""Datasets, multi-crop augmentations and samplers."""
from .datasets import (DATASET_INFO, DATASETS, DataError, split_root, FashionMNIST, ImageFolderSafe, SyntheticShapes,
                       TransformedDataset, build_dataset)
from .sampler import RepeatedAugSampler, ResumableDistributedSampler, repeated_aug_sampler
from .transforms import DataAugmentationDINO, GaussianBlur, Solarization, eval_transform

__all__ = ["DATASET_INFO", "DATASETS", "DataError", "FashionMNIST", "ImageFolderSafe", "SyntheticShapes",
           "TransformedDataset", "build_dataset", "ResumableDistributedSampler", "DataAugmentationDINO",
           "GaussianBlur", "Solarization", "eval_transform"]
