"""Self-supervised methods: each a ``TrainingTask`` (``ssvit.engine.task``) that plugs a model, an
objective and augmentations into the engine; ``registry`` maps ``--method`` names to them."""
from .registry import METHODS, get_method, list_methods, register_method

__all__ = ["METHODS", "get_method", "list_methods", "register_method"]
