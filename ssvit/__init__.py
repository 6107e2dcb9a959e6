"""ssvit: unified self-supervised Vision Transformer pretraining and evaluation."""

__version__ = "0.1.0"
