"""The contract between a training task (a self-supervised method, finetuning, ...) and the engine.

A task owns its networks (``student``, an optional EMA ``teacher``), its objective (``criterion``)
and its data transform; the engine owns everything else: data loading, schedules applied to the
optimizer, precision, DDP, clipping, the teacher's EMA step, checkpoints, stop signals, logging.
The engine never imports a task: the entry point resolves ``--method`` in the registry
(``ssvit.methods.registry``) and hands the task's class to ``Trainer``.

Adding a method = one subclass of ``TrainingTask`` implementing ``build_transform``,
``training_step`` and ``schedules`` (most call ``ssvit.engine.schedules.linear_scaled_cosine``),
plus one line in the registry table and a config -- never a copy of the loop.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn as nn


class ClipPolicy(NamedTuple):
    """How the engine clips gradients after backward (and after un-scaling under fp16).

    ``per_parameter``: each gradient tensor to norm <= ``max_norm`` on its own (DINO, iBOT, EsViT,
    SiT-v2: ``utils.clip_gradients``); ``global_norm``: the norm of all gradients together
    (``torch.nn.utils.clip_grad_norm_``: RelViT's Lightning ``gradient_clip_val``, MAE's finetuning).
    ``max_norm`` 0: no clipping."""
    mode: str
    max_norm: float


class Schedules(NamedTuple):
    """Per-iteration values, each of length ``epochs * iterations per epoch``: the learning rate, the
    weight decay and the EMA teacher momentum (None without an EMA teacher). Each optimizer group's
    ``lr_scale`` / ``wd_scale`` multiplies them (a group without ``wd_scale`` keeps its own weight
    decay)."""
    lr: Any
    wd: Any
    momentum: Any = None


class TrainingTask(nn.Module):
    """A task in the spirit of timm's ``TrainingTask``: ``student`` (trained), an optional EMA
    ``teacher`` (``has_ema_teacher``) and ``criterion`` (the loss module, checkpointed under
    ``loss_key``). Every trainable parameter of the task except the teacher's is optimised.

    The engine calls, in this order: ``resolve_args`` and ``check_args`` (class), the constructor,
    ``build_transform`` / ``build_batch_transform`` / ``dataset_path`` / ``build_sampler``,
    ``param_groups``, ``schedules``, ``clip_policy``, ``resume_source`` and ``load_checkpoint_state``;
    per iteration ``training_step`` then, after backward and clipping, ``after_backward`` and, after
    the optimizer step, ``update_teacher``; per epoch ``epoch_stats`` / ``epoch_warnings``,
    ``validate`` (every ``--val_freq`` epochs) and ``numbered_checkpoint``; ``checkpoint_state``
    whenever it saves.
    """

    name: str = ""
    loss_key: str = "loss"
    #: the engine updates ``teacher`` from ``student`` by EMA after each optimizer step
    has_ema_teacher: bool = True
    #: the student's parameters that get no gradient are the same at every iteration (e.g. SERE's local
    #: heads with few local crops, RelViT's unused ``v_lin``): DDP gets ``static_graph=True``, which also
    #: allows several student forward calls per step (``find_unused_parameters`` fails with those:
    #: "Expected to mark a variable ready only once").
    ddp_static_graph: bool = False
    #: name of the ``validate`` metric that selects ``checkpoint_best.pth`` (None: no best checkpoint)
    best_metric: Optional[str] = None
    best_mode: str = "max"

    student: nn.Module
    teacher: Optional[nn.Module]
    criterion: nn.Module

    # ----- flags ------------------------------------------------------------------------------
    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """The task's flags (the original entry point's names and defaults)."""

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        """Fill values derived from other flags (e.g. a per-dataset table) before the engine's checks."""

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        """Validate flag values; raise ``ValueError`` with a clear message."""

    # ----- data -------------------------------------------------------------------------------
    def build_transform(self, args: argparse.Namespace) -> Callable:
        """The per-image training transform (PIL image -> what ``training_step`` gets, collated)."""
        raise NotImplementedError(f"{type(self).__name__} must define build_transform")

    def build_batch_transform(self, args: argparse.Namespace) -> Optional[Callable]:
        """``--augmentation batched``: ``(images on the device, torch.Generator) -> batch`` applied by
        the engine to each loaded batch; None: the per-image transform makes the batch."""
        if getattr(args, "augmentation", "pil") == "batched":
            raise ValueError(f"--augmentation batched is implemented for DINO's multi-crop (--method dino), not for "
                             f"--method {args.method}: use --augmentation pil")
        return None

    def dataset_path(self, args: argparse.Namespace) -> Optional[str]:
        """Where the engine reads the training images (``--data_path``; a finetuning task ``.../train``)."""
        return args.data_path

    def build_sampler(self, dataset, num_replicas: int, rank: int, seed: int):
        """The training sampler (``set_epoch``, ``set_start``, ``num_samples``), or None for the engine's
        ``ResumableDistributedSampler``."""
        return None

    # ----- the step ---------------------------------------------------------------------------
    def training_step(self, student: nn.Module, batch: Any, epoch: int, it: int = 0, labels=None,
                      index=None) -> tuple[torch.Tensor, dict]:
        """Forward teacher and ``student`` (possibly DDP-wrapped) on one batch (collated, on the
        device); ``it`` is the iteration within the epoch, ``labels`` / ``index`` the dataset's
        targets and sample indices. Returns the loss to optimise and a dict of floats to log (a
        ``loss`` entry there replaces the logged value)."""
        raise NotImplementedError(f"{type(self).__name__} must define training_step")

    def after_backward(self, epoch: int) -> None:
        """Gradient handling between clipping and the optimizer step (e.g. DINO's last-layer freeze)."""

    # ----- optimisation -----------------------------------------------------------------------
    def extra_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters outside the student and the teacher (e.g. SiT's learned loss weights):
        optimised, and under DDP their gradients averaged over the ranks by the engine."""
        return [(n, p) for n, p in self.named_parameters()
                if p.requires_grad and not n.startswith(("student.", "teacher."))]

    def param_groups(self, student: nn.Module) -> list[dict]:
        """Optimizer parameter groups. Default: timm's / DINO's rule over the student -- matrices follow the
        weight-decay schedule (``wd_scale`` 1), biases and 1-D tensors get none -- then the extra
        parameters (``extra_param_groups``). A group may carry ``lr_scale`` / ``wd_scale`` (the
        schedules' values are multiplied by them); a group without ``wd_scale`` keeps its own weight
        decay."""
        from ..utils.params import get_params_groups
        return get_params_groups(student) + self.extra_param_groups()

    def extra_param_groups(self) -> list[dict]:
        """``extra_parameters`` as groups: matrices decayed, biases / vectors / scalars not."""
        extra = self.extra_parameters()
        decayed = [p for n, p in extra if p.ndim >= 2 and not n.endswith(".bias")]
        free = [p for n, p in extra if not (p.ndim >= 2 and not n.endswith(".bias"))]
        groups = []
        if decayed:
            groups.append({"params": decayed, "wd_scale": 1.0})
        if free:
            groups.append({"params": free, "weight_decay": 0.0, "wd_scale": 0.0})
        return groups

    def schedules(self, args: argparse.Namespace, niter_per_ep: int, bs_total: int) -> Schedules:
        """The per-iteration lr / weight decay / momentum (``Schedules``); ``bs_total`` is the effective
        batch (per-GPU batch x accumulation x world size). DINO-style tasks return
        ``ssvit.engine.schedules.linear_scaled_cosine(args, niter_per_ep, bs_total, ...)``."""
        raise NotImplementedError(f"{type(self).__name__} must define schedules")

    def clip_policy(self, args: argparse.Namespace) -> ClipPolicy:
        """Gradient clipping (``ClipPolicy``); default DINO's per-parameter ``--clip_grad``."""
        return ClipPolicy("per_parameter", float(args.clip_grad))

    # ----- EMA teacher ------------------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """theta_t <- m * theta_t + (1 - m) * theta_s over the parameters common to both by name
        (DINO's positional zip when the networks are built alike; buffers untouched); nothing
        without an EMA teacher."""
        if not self.has_ema_teacher:
            return
        t, s = self.ema_pairs()
        if not t:
            return
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, torch._foreach_mul(s, 1.0 - momentum))

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher, student) parameter lists that ``update_teacher`` pairs (computed once)."""
        if not hasattr(self, "_ema_pairs"):
            s = dict(self.student.named_parameters())
            pairs = [(p_t, s[n]) for n, p_t in self.teacher.named_parameters() if n in s]
            self._ema_pairs = ([t for t, _ in pairs], [s for _, s in pairs])
        return self._ema_pairs

    # ----- per epoch --------------------------------------------------------------------------
    def epoch_stats(self, last_batch: Any = None) -> dict[str, float]:
        """Figures logged with the epoch's training stats (e.g. DINO's collapse monitors)."""
        return {}

    def epoch_warnings(self, stats: dict) -> list[str]:
        """Warnings about the epoch's stats (e.g. a collapse), printed by the engine."""
        return []

    def validate(self, epoch: int) -> Optional[dict]:
        """Validation metrics of the epoch (every ``--val_freq`` epochs), or None: no validation."""
        return None

    def numbered_checkpoint(self, epoch: int, saveckp_freq: int) -> bool:
        """Write ``checkpointNNNN.pth`` at the end of ``epoch`` (DINO: every ``saveckp_freq`` epochs, 0 included)."""
        return bool(saveckp_freq) and epoch % saveckp_freq == 0

    # ----- checkpoints ------------------------------------------------------------------------
    def resume_source(self, args: argparse.Namespace, output_dir: str) -> Optional[str]:
        """The checkpoint to start from, or None: ``output_dir/checkpoint.pth`` when it exists."""
        path = os.path.join(output_dir, "checkpoint.pth")
        return path if os.path.isfile(path) else None

    def checkpoint_state(self) -> dict[str, Any]:
        """This task's entries of the training checkpoint (the originals' layout: ``student`` with
        ``module.``, ``teacher`` -- with ``module.`` when it has BatchNorm --, ``<loss_key>``)."""
        from ..utils.checkpoint import add_prefix
        from ..utils.params import has_batchnorm
        state = {"student": add_prefix(self.student.state_dict(), "module.")}
        if self.has_ema_teacher:
            prefix = "module." if has_batchnorm(self.teacher) else ""
            state["teacher"] = add_prefix(self.teacher.state_dict(), prefix)
        state[self.loss_key] = self.criterion.state_dict()
        state.update(self.extra_checkpoint_state())
        return state

    def load_checkpoint_state(self, ckpt: dict) -> None:
        """The inverse of ``checkpoint_state`` (strict by name and shape; a missing ``<loss_key>``
        entry keeps the fresh state, as the originals' ``restart_from_checkpoint``)."""
        from ..utils.checkpoint import CheckpointError, load_state_checked, strip_prefixes
        needed = ("student", "teacher") if self.has_ema_teacher else ("student",)
        missing = [k for k in needed if k not in ckpt]
        if missing:
            raise CheckpointError(f"not a training checkpoint of this method (no {' / '.join(repr(k) for k in missing)} "
                                  "entries)")
        load_state_checked(self.student, strip_prefixes(ckpt["student"], ("module.",)), "student")
        if self.has_ema_teacher:
            load_state_checked(self.teacher, strip_prefixes(ckpt["teacher"], ("module.",)), "teacher")
        if self.loss_key in ckpt:
            self.criterion.load_state_dict(ckpt[self.loss_key])
        self.load_extra_checkpoint_state(ckpt)

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """Further top-level checkpoint entries (restored by ``load_extra_checkpoint_state``)."""
        return {}

    def load_extra_checkpoint_state(self, ckpt: dict) -> None:
        """Restore what ``extra_checkpoint_state`` saved."""
