"""The contract between a self-supervised method and the shared training engine.

A method owns its student and teacher networks and its objective; the engine owns everything
else (data loading, schedules, optimizer, precision, DDP, clipping, EMA, checkpoints, logging).
Adding a method = subclass ``SSLMethod``, implement ``build_transform`` and ``training_step``,
register it, and add a config -- never a copy of the loop.
"""
from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..objectives import KoLeoLoss

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
    """A training task in the spirit of timm's ``TrainingTask``: ``student`` (trained), an optional
    EMA ``teacher`` (``has_ema_teacher``; no momentum schedule and no checkpoint entry without one)
    and ``criterion`` (the loss module, whose state -- e.g. centers -- is checkpointed under
    ``loss_key``). Every trainable parameter of the task except the teacher's is optimised: the
    student's and any outside it (e.g. learned loss weights on the criterion).

    The engine calls, in this order: ``check_args`` (class), the constructor, ``resume_source``,
    ``load_checkpoint_state``; per iteration ``training_step`` then, after backward,
    ``after_backward``; ``update_teacher``; per epoch ``collapse_stats``, ``validate`` (every
    ``--val_freq`` epochs), ``numbered_checkpoint``; ``checkpoint_state`` whenever it saves.
    """

    name: str = ""
    loss_key: str = "loss"
    #: the method keeps an EMA teacher updated by the engine after each optimizer step
    has_ema_teacher: bool = True
    #: the student's parameters that get no gradient are the same at every iteration (e.g. SERE's local heads
    #: with few local crops, RelViT's unused ``v_lin`` and position embedding): DDP is told so with
    #: ``static_graph=True``, which also allows the student's several forward calls per step (global, then
    #: local crops). (``find_unused_parameters`` would search the graph at every step and fails with two
    #: forward calls: "Expected to mark a variable ready only once".)
    ddp_static_graph: bool = False
    #: name of the ``validate`` metric that selects ``checkpoint_best.pth`` (None: no best checkpoint)
    best_metric: Optional[str] = None
    best_mode: str = "max"

    student: nn.Module
    teacher: Optional[nn.Module]
    criterion: nn.Module

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """Method-specific flags (with the original entry point's names and defaults)."""

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        """Fill values derived from other flags (e.g. a per-dataset patch-size table) before the
        engine's own checks."""

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        """Validate flag values; raise ``ValueError`` with a clear message."""

    def build_transform(self, args: argparse.Namespace) -> Callable:
        raise NotImplementedError

    def build_batch_transform(self, args: argparse.Namespace) -> Optional[Callable]:
        """``--augmentation batched``: a callable ``(images on the device, torch.Generator) -> batch``
        that the engine applies to each batch the loader yields (``build_transform`` then only turns
        images into tensors); None: the per-image transform makes the batch."""
        if getattr(args, "augmentation", "pil") == "batched":
            raise ValueError(f"--augmentation batched is implemented for DINO's multi-crop (--method dino), not for "
                             f"--method {args.method}: use --augmentation pil")
        return None

    def training_step(self, student: nn.Module, batch: Any, epoch: int, it: int = 0, labels=None,
                      index=None) -> tuple[torch.Tensor, dict]:
        """Forward teacher and ``student`` (possibly DDP-wrapped) on one batch (what the transform
        returned, collated and moved to the device); ``it`` is the iteration within the epoch,
        ``labels`` the dataset's targets and ``index`` the sample indices of the batch (both on the
        device). Return the loss to optimise and a dict of extra floats to log (a ``loss`` entry
        there replaces the logged value, as SERE logs its iBOT part only)."""
        raise NotImplementedError

    # ----- optimisation -----------------------------------------------------------------------
    def extra_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters of the task outside the student and the teacher (e.g. SiT's learned
        uncertainty weights on the criterion). The engine optimises them and, under DDP,
        averages their gradients over the ranks."""
        return [(n, p) for n, p in self.named_parameters()
                if p.requires_grad and not n.startswith(("student.", "teacher."))]

    def ddp_options(self) -> dict:
        """Keyword arguments of the student's ``DistributedDataParallel`` wrapper."""
        return {"static_graph": True} if self.ddp_static_graph else {}

    def param_groups(self, student: nn.Module) -> list[dict]:
        """Optimizer parameter groups (regularised first): DINO's rule over the student, then the
        extra parameters (matrices decayed; biases, vectors and scalars not). A group may carry ``lr_scale`` / ``wd_scale`` (the
        schedules' values are multiplied by them); a group without ``wd_scale`` keeps its own
        weight decay, except the first, which follows the weight-decay schedule."""
        from ..utils.params import get_params_groups
        groups = get_params_groups(student)
        extra = self.extra_parameters()
        # outside the student: matrices decayed, biases / vectors / scalars (loss weights) not
        decayed = [p for n, p in extra if p.ndim >= 2 and not n.endswith(".bias")]
        free = [p for n, p in extra if not (p.ndim >= 2 and not n.endswith(".bias"))]
        if decayed:
            groups.append({"params": decayed, "wd_scale": 1.0})
        if free:
            groups.append({"params": free, "weight_decay": 0.0, "wd_scale": 0.0})
        return groups

    def schedules(self, args: argparse.Namespace, niter_per_ep: int, bs_total: int) -> Optional[dict]:
        """Per-iteration schedules ``{'lr': array, 'wd': array, 'momentum': array or None}`` (length
        ``epochs * niter_per_ep``) replacing the engine's DINO rule (cosine, lr x total batch / 256,
        warm-up), or None to keep it."""
        return None

    def after_backward(self, epoch: int) -> None:
        """Gradient handling between backward (and clipping) and the optimizer step."""

    # ----- engine hooks -----------------------------------------------------------------------
    def dataset_path(self, args: argparse.Namespace) -> Optional[str]:
        """Where the engine reads the training images (``--data_path``; a finetuning task reads
        ``data_path/train``)."""
        return args.data_path

    def build_sampler(self, dataset, num_replicas: int, rank: int, seed: int):
        """The training sampler (``set_epoch``, ``set_start``, ``num_samples`` per rank), or None for
        the engine's ``ResumableDistributedSampler``."""
        return None

    def resume_source(self, args: argparse.Namespace, output_dir: str) -> Optional[str]:
        """The checkpoint to start from, or None: ``output_dir/checkpoint.pth`` when it exists."""
        path = os.path.join(output_dir, "checkpoint.pth")
        return path if os.path.isfile(path) else None

    def numbered_checkpoint(self, epoch: int, saveckp_freq: int) -> bool:
        """Write ``checkpointNNNN.pth`` at the end of ``epoch`` (DINO: every ``saveckp_freq`` epochs, 0 included)."""
        return bool(saveckp_freq) and epoch % saveckp_freq == 0

    def validate(self, epoch: int) -> Optional[dict]:
        """Validation metrics of the epoch (every ``--val_freq`` epochs), or None: no validation."""
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        """This task's entries of the training checkpoint (the originals' layout: ``student`` with
        ``module.``, ``teacher`` -- with ``module.`` when it has BatchNorm --, ``<loss_key>``)."""
        from ..utils.checkpoint import add_prefix
        state = {"student": add_prefix(self.student.state_dict(), "module.")}
        if self.has_ema_teacher:
            prefix = "module." if self.teacher_has_batchnorm() else ""
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
        """Further top-level checkpoint entries of the method (restored by ``load_extra_checkpoint_state``)."""
        return {}

    def load_extra_checkpoint_state(self, ckpt: dict) -> None:
        """Restore what ``extra_checkpoint_state`` saved."""

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
        """theta_t <- m * theta_t + (1 - m) * theta_s for every pair (buffers untouched); nothing
        without an EMA teacher."""
        if not self.has_ema_teacher:
            return
        t, s = self.ema_pairs()
        if not t:
            return
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, torch._foreach_mul(s, 1.0 - momentum))

    def teacher_has_batchnorm(self) -> bool:
        return self.has_ema_teacher and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.teacher.modules())

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


class DINOFamily(SSLMethod):
    """Shared behaviour of the self-distillation methods (DINO, iBOT, SERE, EsViT): teacher
    temperature checks, multi-crop sizes, last-layer freezing, and DINOv2's KoLeo term for the
    methods that add ``--koleo_loss_weight`` (``add_koleo_args``) and call ``with_koleo``."""

    @classmethod
    def check_args(cls, args):
        check_self_distillation_args(args)

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.freeze_last_layer = args.freeze_last_layer
        self.koleo_loss_weight = getattr(args, "koleo_loss_weight", 0.0)
        if self.koleo_loss_weight:
            self.koleo = KoLeoLoss()

    def with_koleo(self, loss: torch.Tensor, extra: dict, student_global_cls: torch.Tensor,
                   n_global: int) -> tuple[torch.Tensor, dict]:
        """``loss + koleo_loss_weight * sum_k KoLeo(student CLS of global crop k)`` (DINOv2: the
        student backbone's CLS tokens, before the head, each global crop's batch separately);
        ``student_global_cls`` is (n_global * B, D), crop-major. Logs ``koleo_loss``, and the
        method's own loss under ``loss`` unless ``extra`` already names it. Weight 0: unchanged."""
        if not self.koleo_loss_weight:
            return loss, extra
        koleo = sum(self.koleo(f) for f in student_global_cls.chunk(n_global))
        extra = {"loss": loss.item(), **extra, "koleo_loss": koleo.item()}
        return loss + self.koleo_loss_weight * koleo, extra

    def schedules(self, args: argparse.Namespace, niter_per_ep: int, bs_total: int) -> Optional[dict]:
        """Per-iteration schedules ``{'lr': array, 'wd': array, 'momentum': array or None}`` (length
        ``epochs * niter_per_ep``) replacing the engine's DINO rule (cosine, lr x total batch / 256,
        warm-up), or None to keep it."""
        return None

    def after_backward(self, epoch: int) -> None:
        from ..utils.params import cancel_gradients_last_layer
        cancel_gradients_last_layer(epoch, self.student, self.freeze_last_layer)


def add_koleo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--koleo_loss_weight", default=0.0, type=float,
                        help="DINOv2's KoLeo regulariser on the student's backbone CLS tokens of each global "
                             "crop, times this weight (DINOv2: 0.1); 0 = the method's loss alone")


def check_koleo_args(args: argparse.Namespace) -> None:
    if args.koleo_loss_weight < 0:
        raise ValueError(f"--koleo_loss_weight must be >= 0, got {args.koleo_loss_weight}")
    if args.koleo_loss_weight and args.batch_size_per_gpu < 2:
        raise ValueError("--koleo_loss_weight needs --batch_size_per_gpu >= 2 (a nearest neighbour per crop)")


def check_self_distillation_args(args: argparse.Namespace, patch_rule: bool = True) -> None:
    """Flags of the self-distillation methods: EMA momentum, teacher temperatures (a warm-up longer
    than the run is clamped, with a warning), and crops that
    are at least -- and a multiple of -- the ViT patch (``patch_rule``; multi-stage backbones take
    any crop size)."""
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)
    need(0 <= args.momentum_teacher <= 1, f"--momentum_teacher must be in [0, 1], got {args.momentum_teacher}")
    need(args.teacher_temp > 0 and args.warmup_teacher_temp > 0, "teacher temperatures must be > 0")
    need(args.warmup_teacher_temp_epochs >= 0, "warm-up epochs must be >= 0")
    if args.warmup_teacher_temp_epochs > args.epochs:
        warnings.warn(f"--warmup_teacher_temp_epochs {args.warmup_teacher_temp_epochs} exceeds --epochs "
                      f"{args.epochs}: clamped to {args.epochs}")
        args.warmup_teacher_temp_epochs = args.epochs
    for name in ("global_crops_scale", "local_crops_scale"):
        v = getattr(args, name)
        need(len(v) == 2 and 0 < v[0] <= v[1] <= 1, f"--{name} takes two values 0 < min <= max <= 1, got {list(v)}")
    if not patch_rule:
        return
    for name in ("global_crops_size", "local_crops_size"):
        value = getattr(args, name)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            need(v >= args.patch_size, f"--{name} ({v}) must be at least --patch_size ({args.patch_size})")
            need(v % args.patch_size == 0, f"--{name} ({v}) must be a multiple of --patch_size ({args.patch_size}): "
                 "the patch embedding would drop the remaining pixels")
