"""Evaluation protocols: weighted k-NN (``knn``), attention-map visualisation (``attention``,
imported on demand because it needs matplotlib / scikit-image), and EsViT's analyses: region
correspondence (``correspondence``) and attention entropy (``attention_entropy``)."""
from .attention_entropy import EntropyMeter, attention_entropy, block_entropy
from .knn import (build_eval_backbone, build_knn_datasets, checkpoint_img_size, dataset_labels, extract_features,
                  knn_classifier, knn_eval_sizes, raw_pixel_features)

__all__ = ["EntropyMeter", "attention_entropy", "block_entropy", "build_eval_backbone", "build_knn_datasets",
           "checkpoint_img_size", "dataset_labels", "extract_features", "knn_classifier", "knn_eval_sizes",
           "raw_pixel_features"]
