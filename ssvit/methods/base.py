"""The contract between a self-supervised method and the shared training engine.

A method owns its student and teacher networks and its objective; the engine owns everything
else (data loading, schedules, optimizer, precision, DDP, clipping, EMA, checkpoints, logging).
Adding a method = subclass ``SSLMethod``, implement ``build_transform`` and ``training_step``,
register it, and add a config -- never a copy of the loop.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
import torch.nn as nn

_METHODS: dict[str, type["SSLMethod"]] = {}


def register_method(name: str):
    def deco(cls):
        _METHODS[name] = cls
        cls.name = name
        return cls
    return deco


def get_method(name: str) -> type["SSLMethod"]:
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}'; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    return sorted(_METHODS)


class SSLMethod(nn.Module):
    """Holds ``student`` (trained), ``teacher`` (EMA, no grad) and ``criterion`` (the loss module,
    whose state -- e.g. centers -- is checkpointed under ``loss_key``)."""

    name: str = ""
    loss_key: str = "loss"
    #: DDP must look for parameters without gradient (e.g. SERE's local heads left unused)
    ddp_find_unused_parameters: bool = False
    #: iBOT / SERE write ``checkpointNNNN.pth`` only for epochs > 0 (DINO also at epoch 0)
    numbered_checkpoint_skips_epoch0: bool = False

    student: nn.Module
    teacher: nn.Module
    criterion: nn.Module

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """Method-specific flags (with the original entry point's names and defaults)."""

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        """Validate flag values; raise ``ValueError`` with a clear message."""

    def build_transform(self, args: argparse.Namespace) -> Callable:
        raise NotImplementedError

    def training_step(self, student: nn.Module, batch: Any, epoch: int, it: int = 0) -> tuple[torch.Tensor, dict]:
        """Forward teacher and ``student`` (possibly DDP-wrapped) on one batch (what the transform
        returned, collated and moved to the device); ``it`` is the iteration within the epoch.
        Return the loss to optimise and a dict of extra floats to log (a ``loss`` entry there
        replaces the logged value, as SERE logs its iBOT part only)."""
        raise NotImplementedError

    def param_groups(self, student: nn.Module) -> list[dict]:
        """Optimizer parameter groups (regularised first); DINO's rule by default."""
        from ..utils.params import get_params_groups
        return get_params_groups(student)

    # ----- EMA teacher ------------------------------------------------------------------------
    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher/student parameter pairs updated by EMA: parameters common to both by name
        (equals DINO's positional zip when the two networks are built alike)."""
        if not hasattr(self, "_ema_pairs"):
            s = dict(self.student.named_parameters())
            pairs = [(p_t, s[n]) for n, p_t in self.teacher.named_parameters() if n in s]
            self._ema_pairs = ([t for t, _ in pairs], [s for _, s in pairs])
        return self._ema_pairs

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """theta_t <- m * theta_t + (1 - m) * theta_s for every pair (buffers untouched)."""
        t, s = self.ema_pairs()
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, torch._foreach_mul(s, 1.0 - momentum))

    def teacher_has_batchnorm(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.teacher.modules())

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {}

    # ----- collapse monitors (EMA-teacher methods) ---------------------------------------------
    def observe_teacher(self, cls_logits: torch.Tensor, epoch: int) -> None:
        """Called by ``training_step`` with the teacher's view-level logits (N, K), before the loss
        moves the center; accumulates the epoch's collapse figures."""
        if not hasattr(self, "_monitor"):
            from .collapse import CollapseMonitor
            self._monitor = CollapseMonitor()
        self._monitor.observe(cls_logits, self.criterion.center, float(self.criterion.teacher_temp_schedule[epoch]))

    @torch.no_grad()
    def teacher_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) teacher backbone embedding (the CLS token for ViTs, pooled features otherwise)."""
        out = self.teacher.backbone(images)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out[:, 0] if out.ndim == 3 else out

    def collapse_stats(self, last_batch: Any = None) -> dict[str, float]:
        """The epoch's collapse figures (``teacher_entropy``, ``teacher_kl_uniform``, ``embed_std``);
        empty for a method that never called ``observe_teacher``."""
        if not hasattr(self, "_monitor"):
            return {}
        from .collapse import embedding_std, first_global_crop
        stats = self._monitor.distribution_stats()
        images = first_global_crop(last_batch)
        if images is not None and images.shape[0] > 1:
            was_training = self.teacher.training
            self.teacher.eval()
            feats = self.teacher_embedding(images)
            self.teacher.train(was_training)
            stats["embed_std"] = embedding_std(feats)
            stats["embed_dim"] = feats.shape[-1]
        return stats

    def collapse_warnings(self, stats: dict) -> list[str]:
        from .collapse import collapse_warnings
        return collapse_warnings(stats)
