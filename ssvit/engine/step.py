"""One training iteration, shared by the engine (``Trainer``), ``tools/benchmark.py`` and the tests.

Order (facebookresearch/dino ``train_one_epoch``, training spec §1): forward + loss under autocast,
the loss read on the host (logging and the finiteness check, as the originals), backward (through
the GradScaler with fp16), then on the stepping iteration of an accumulation window: the gradients
of the task's parameters outside the (DDP) student averaged over ranks, unscale, clipping (the
task's ``ClipPolicy``: per parameter as DINO, or the global norm), the method's ``after_backward`` (DINO: last-layer gradient cancelling), optimizer step,
EMA teacher update.

Beyond the originals, a non-finite loss (or, in fp32, a non-finite gradient) does not end the run:
the update is skipped on every rank (the ranks agree with one all-reduce that also carries the
stop request) and counted; the caller stops after ``--max_bad_steps`` consecutive ones.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn

from ..utils.distributed import all_reduce_max, collective_device, is_dist
from ..utils.params import clip_gradients
from ..utils.precision import autocast


def clip_global_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The norm of all gradients together scaled to <= ``max_norm`` (``clip_grad_norm_``); returns it."""
    return torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)


CLIP_FUNCTIONS = {"per_parameter": clip_gradients, "global_norm": clip_global_norm}


class StepResult(NamedTuple):
    loss: float          # the loss as logged (a method's ``extra['loss']`` replaces it)
    extra: dict          # the method's extra floats
    stepped: bool        # an optimizer step was taken at this iteration
    skipped: bool        # non-finite loss or gradient: no update (on every rank)
    stop: int            # the stop signal some rank received (0: none; the largest number when several), agreed
    save: bool = False   # some rank's periodic checkpoint is due (agreed: every rank saves together)


class TrainStep:
    """Callable ``step(batch, epoch, i, momentum, stop_signal=0, save_due=False) -> StepResult``.

    ``i`` is the iteration within the epoch (the accumulation window is ``i // accum_iter``);
    ``momentum`` the EMA momentum of this iteration (ignored by teacher-less methods);
    ``stop_signal`` the stop signal this rank received (0: none) and ``save_due`` whether its
    periodic checkpoint is due: both are agreed by the ranks in the step's one all-reduce, with
    the non-finite check."""

    def __init__(self, method: nn.Module, student: nn.Module, optimizer: torch.optim.Optimizer, *,
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None, clip_grad: float = 0.0,
                 accum_iter: int = 1, agree_every_step: bool = True, clip_mode: str = "per_parameter",
                 clip_fn=None):
        self.method, self.student, self.optimizer = method, student, optimizer
        self.device, self.amp_dtype = device, amp_dtype
        self.clip_grad, self.accum_iter = clip_grad, accum_iter
        self.agree = agree_every_step
        if clip_mode not in CLIP_FUNCTIONS:
            raise ValueError(f"clip mode must be one of {', '.join(CLIP_FUNCTIONS)}, got {clip_mode!r}")
        # tools/benchmark.py --compare_original swaps in the original's per-parameter loop
        self.clip_fn = clip_fn or CLIP_FUNCTIONS[clip_mode]
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        self.ddp = isinstance(student, nn.parallel.DistributedDataParallel)

    def __call__(self, batch: Any, epoch: int, i: int, momentum: float, stop_signal: int = 0,
                 labels: Any = None, index: Any = None, save_due: bool = False) -> StepResult:
        method, opt, k = self.method, self.optimizer, self.accum_iter
        step_now = (i + 1) % k == 0
        sync = self.student.no_sync() if (self.ddp and not step_now) else contextlib.nullcontext()
        with sync:
            with autocast(self.device, self.amp_dtype):
                loss, extra = method.training_step(self.student, batch, epoch, i, labels=labels, index=index)
            loss_value = loss.item()
            bad = not math.isfinite(loss_value)
            stop, save = int(stop_signal), bool(save_due)
            if self.agree:
                worst, stop, save = all_reduce_max(bad, stop, save)
                bad, stop, save = bool(worst), int(stop), bool(save)
            if bad:  # drop this accumulation window's gradients; no rank runs backward
                opt.zero_grad(set_to_none=True)
                return StepResult(loss_value, extra, False, True, stop, save)
            if k > 1:
                loss = loss / k
            if self.scaler is None:
                loss.backward()
            else:
                self.scaler.scale(loss).backward()
        logged = float(extra.pop("loss")) if "loss" in extra else loss_value
        if not step_now:
            return StepResult(logged, extra, False, False, stop, save)
        if self.ddp:
            self.average_extra_gradients()
        norms = None
        if self.scaler is not None:  # true gradients for the clipping and the method's after_backward
            self.scaler.unscale_(opt)
        if self.clip_grad:
            norms = self.clip_fn(method.student, self.clip_grad)
        if self.scaler is None and isinstance(norms, torch.Tensor) and norms.numel() \
                and not bool(torch.isfinite(norms).all()):
            # fp32: a non-finite gradient would poison the weights (the gradients are already
            # all-reduced, so every rank sees the same and skips together). fp16: the scaler skips.
            opt.zero_grad(set_to_none=True)
            return StepResult(logged, extra, False, True, stop, save)
        method.after_backward(epoch)
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()
        opt.zero_grad(set_to_none=True)
        method.update_teacher(momentum)
        return StepResult(logged, extra, True, False, stop, save)

    def average_extra_gradients(self) -> None:
        """DDP all-reduces the student's gradients only: average those of the task's other
        trainable parameters (e.g. learned loss weights) over the ranks, in one all-reduce."""
        params = [p for _, p in self.method.extra_parameters() if p.grad is not None]
        if not params or not is_dist():
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params]).to(collective_device())
        torch.distributed.all_reduce(flat)
        flat = flat.to(params[0].grad.device) / torch.distributed.get_world_size()
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

