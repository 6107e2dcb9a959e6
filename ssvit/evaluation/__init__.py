"""Evaluation protocols: weighted k-NN (``knn``) and attention-map visualisation (``attention``,
imported on demand because it needs matplotlib / scikit-image)."""
from .knn import (build_eval_backbone, build_knn_datasets, checkpoint_img_size, dataset_labels, extract_features,
                  knn_classifier, knn_eval_sizes, raw_pixel_features)

__all__ = ["build_eval_backbone", "build_knn_datasets", "checkpoint_img_size", "dataset_labels",
           "extract_features", "knn_classifier", "knn_eval_sizes", "raw_pixel_features"]
