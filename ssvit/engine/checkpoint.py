"""Checkpoint I/O and weight loading, as the engine and the entry points import them (the code lives
in the bottom layer ``ssvit.utils.checkpoint`` and in ``ssvit.models.loading``)."""
from ..models.loading import (HEAD_PREFIXES, extract_backbone_state, load_backbone_state,  # noqa: F401
                              load_pretrained_weights, read_pretrained_state)
from ..utils.checkpoint import (CheckpointError, add_prefix, load_checkpoint, load_state_checked,  # noqa: F401
                                save_atomic, save_text_atomic, set_rng_state, strip_prefixes, torch_rng_state)
