"""The one training engine shared by every task: wiring (process group, data, model, DDP, optimizer,
precision, schedules) and ``fit`` (resume, epochs, end-of-epoch validation, logs and checkpoints,
the agreed stop). The epoch loop is ``loop.EpochLoop``, checkpoints and resume ``resume.Checkpointing``,
the output folder ``run_dir.RunDirectory``.

Per iteration (facebookresearch/dino ``train_one_epoch`` order, see training spec §1): set lr / wd
from the schedules, forward + loss under autocast, stop on a non-finite loss, backward, clipping
(the task's policy), the task's gradient hook (DINO: last-layer cancelling), optimizer step, EMA
teacher update.

Beyond the originals: CPU and single-GPU runs without a launcher, bf16 where native, atomic
checkpoints in DINO's layout that never hold non-finite weights, exact mid-epoch resume (sampler
position + RNG states + per-sample seeded augmentation), SIGTERM / SIGUSR1 / SIGUSR2 pre-emption
agreed by all ranks, non-finite steps skipped (``--max_bad_steps``), TensorBoard.
"""
from __future__ import annotations

import argparse
import os
import random
import time
import warnings
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from ..data import DATASET_INFO, ResumableDistributedSampler, TransformedDataset, build_dataset
from ..utils.distributed import all_reduce_max, barrier
from ..utils.params import has_batchnorm
from ..utils.precision import select_amp_dtype
from .distributed import DistInfo, init_distributed
from .loop import EpochLoop
from .optim import build_optimizer, fused_adamw_wanted
from .resume import Checkpointing
from .run_dir import RunDirectory
from .signals import StopRequest
from .step import TrainStep
from .task import Schedules, TrainingTask


def fix_random_seeds(seed: int) -> None:
    """Same seed on every rank (as the originals: augmentation streams are not rank-offset)."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)


def validate_args(args: argparse.Namespace) -> None:
    """Clear errors for bad flag values; clamp warm-ups longer than the run (with a warning)."""
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)
    need(args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}")
    need(args.batch_size_per_gpu >= 1, f"--batch_size_per_gpu must be >= 1, got {args.batch_size_per_gpu}")
    need(args.lr >= 0, f"--lr must be >= 0, got {args.lr}")
    need(args.num_workers >= 0, f"--num_workers must be >= 0, got {args.num_workers}")
    need(args.patch_size >= 1, f"--patch_size must be >= 1, got {args.patch_size}")
    need(args.accum_iter >= 1, f"--accum_iter must be >= 1, got {args.accum_iter}")
    need(args.drop_path_rate is None or 0 <= args.drop_path_rate < 1, f"--drop_path_rate must be in [0, 1), got {args.drop_path_rate}")
    for name in ("clip_grad", "max_iters", "saveckp_freq", "save_every_iters", "save_every_minutes"):
        need(getattr(args, name) >= 0, f"--{name} must be >= 0, got {getattr(args, name)}")
    need(args.max_bad_steps >= 1, f"--max_bad_steps must be >= 1, got {args.max_bad_steps}")
    need(args.warmup_epochs >= 0, "warm-up epochs must be >= 0")
    need(args.val_freq >= 1, f"--val_freq must be >= 1, got {args.val_freq}")
    if args.warmup_epochs > args.epochs:
        warnings.warn(f"--warmup_epochs {args.warmup_epochs} exceeds --epochs {args.epochs}: clamped to {args.epochs}")
        args.warmup_epochs = args.epochs


class Trainer(RunDirectory, Checkpointing, EpochLoop):
    """``Trainer(args, task_cls).fit()``: trains ``task_cls`` (a ``TrainingTask`` subclass, resolved from
    ``--method`` by the entry point) with the flags ``args``."""

    def __init__(self, args: argparse.Namespace, task_cls: type[TrainingTask],
                 dist_info: Optional[DistInfo] = None):
        task_cls.resolve_args(args)
        validate_args(args)
        self.args = args
        self.dist = dist_info or init_distributed(args.device, args.dist_url, getattr(args, "dist_timeout", None),
                                                     getattr(args, "dist_backend", "auto"))
        self.device = self.dist.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the originals
            if args.tf32:  # fp32 matmuls / convolutions (the fp32 islands, --use_fp16 false) on tensor cores
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
        if self.device.type == "cpu" and getattr(args, "retain_host_memory", False):
            from ..utils.host_memory import retain_freed_memory
            retain_freed_memory()
        fix_random_seeds(args.seed)
        os.makedirs(args.output_dir, exist_ok=True)
        if self.dist.is_main:
            self.clean_orphan_temp_files()
        task_cls.check_args(args)
        self.method: TrainingTask = task_cls(args).to(self.device)

        # ---------------- data
        self.batch_transform = self.method.build_batch_transform(args)  # --augmentation batched
        if self.batch_transform is not None and DATASET_INFO[args.dataset].image_size is None:
            raise ValueError(f"--augmentation batched stacks whole images, so it needs a dataset of one image size "
                             f"(fashion_mnist, cifar10, ...): --dataset {args.dataset} is not; use --augmentation pil")
        base = build_dataset(args.dataset, self.method.dataset_path(args), train=True, download=args.download,
                             on_bad_image=args.on_bad_image, synthetic_size=args.synthetic_size,
                             synthetic_image_size=DATASET_INFO["synthetic"].image_size)
        # a batch transform draws per batch; the per-image one then only converts, with no draws to seed
        self.dataset = TransformedDataset(base, self.method.build_transform(args), with_index=True,
                                          seed=args.seed if self.batch_transform is None else None)
        self.sampler = self.method.build_sampler(self.dataset, self.dist.world_size, self.dist.rank, args.seed) or \
            ResumableDistributedSampler(self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                        shuffle=True, seed=args.seed)
        self.niter_per_ep = self.sampler.num_samples // args.batch_size_per_gpu
        if self.niter_per_ep == 0:
            raise ValueError(f"the dataset has {len(self.dataset)} images, fewer than one batch per process "
                             f"({args.batch_size_per_gpu} x {self.dist.world_size} processes)")
        print(f"Data loaded: there are {len(self.dataset)} images.")

        # ---------------- model, optimizer, precision
        self.compiled = []
        if getattr(args, "compile", False):  # in place: names and checkpoint keys stay the eager ones
            from ..utils.compile import compile_task
            self.compiled = compile_task(self.method, args.compile_cache_dir)
            print(f"torch.compile: {', '.join(self.compiled)}")
        student = self.method.student
        if self.dist.distributed:
            has_bn = has_batchnorm(student) or (self.method.has_ema_teacher and has_batchnorm(self.method.teacher))
            if has_bn and self.device.type == "cuda":
                # QUIRK kept: convert_sync_batchnorm converts a module instance once, so iBOT's shared
                # head norm (--norm_in_head with shared heads) is synchronised at its first occurrence
                # only -- 1 and N GPUs differ there as in the original
                self.method.student = student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
                self.method.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(self.method.teacher)
            elif has_bn:
                warnings.warn("BatchNorm layers under CPU (Gloo) DDP use per-process statistics: "
                              "SyncBatchNorm needs GPUs")
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_ddp = nn.parallel.DistributedDataParallel(
                student, device_ids=ids, static_graph=self.method.ddp_static_graph)
        else:
            self.student_ddp = student
        self.optimizer = build_optimizer(args.optimizer, self.method.param_groups(self.student_ddp),
                                         fused=fused_adamw_wanted(args.fused_adamw, self.device))
        self.amp_dtype = select_amp_dtype(self.device, args.use_fp16, args.amp_dtype)
        clip = self.method.clip_policy(args)
        self.step = TrainStep(self.method, self.student_ddp, self.optimizer, device=self.device,
                              amp_dtype=self.amp_dtype, clip_grad=clip.max_norm, clip_mode=clip.mode,
                              accum_iter=args.accum_iter)
        self.scaler = self.step.scaler

        # ---------------- schedules (per iteration; a teacher temperature is per epoch, in the loss)
        # the effective batch (SERE: batch x accum_iter x world size) for the tasks' linear scaling
        bs_total = args.batch_size_per_gpu * args.accum_iter * self.dist.world_size
        sched = self.method.schedules(args, self.niter_per_ep, bs_total)
        if isinstance(sched, dict):  # e.g. ``objectives.schedules.timm_epoch_schedules``
            sched = Schedules(sched["lr"], sched["wd"], sched.get("momentum"))
        self.lr_schedule, self.wd_schedule, self.momentum_schedule = sched
        # each group's scales, read once: a resumed optimizer's groups are the checkpoint's dicts
        self.group_scales = [(g.get("lr_scale"), g.get("wd_scale")) for g in self.optimizer.param_groups]

        self.start_epoch, self.start_iter = 0, 0
        self.tb = None
        self.last_save = time.time()
        self.bad_in_a_row = 0
        self.interrupted = False
        self.stop_signal = 0  # the stop signal agreed by the ranks when ``interrupted``
        self.last_batch = None
        self.best: Optional[float] = None  # the method's best_metric so far (checkpoint_best.pth)

    # ------------------------------------------------------------------ files

    def fit(self, on_interrupt: Optional[Callable[[int], None]] = None) -> dict:
        """Resume if ``output_dir`` holds a checkpoint, write ``config.yaml``, train to ``--epochs``
        (or until a stop signal / ``--max_iters``). ``self.interrupted``: a stop signal (on any rank)
        ended the run before its last epoch -- the checkpoint is written, the job is not done; then
        ``on_interrupt(signal)`` runs on every rank with the agreed signal (a launcher's requeue; default:
        the one a launcher set with ``signals.set_launcher_stop_handler``), else the handler that signal
        had before the run (``StopRequest.forward``). A finished run
        calls neither, whatever arrived during its last epoch."""
        args = self.args
        self.maybe_resume()
        self.write_config()  # only after the resume check accepted this output dir
        if self.dist.is_main:
            print("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
        if self.dist.is_main and args.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(args.output_dir, "tb"))
            except ImportError:  # pragma: no cover
                warnings.warn("tensorboard is not installed: no TensorBoard events written")
        self.iters_this_run = 0
        stats: dict = {}
        start_time = time.time()
        print("Starting training !")
        with StopRequest() as stop:
            for epoch in range(self.start_epoch, args.epochs):
                self.sampler.set_epoch(epoch)
                self.dataset.set_epoch(epoch)
                if self.start_iter:
                    self.sampler.set_start(self.start_iter * args.batch_size_per_gpu)
                stats, interrupted = self.train_one_epoch(epoch, stop)
                if interrupted:  # checkpoint of the partial epoch already written
                    print(f"Stopped in epoch {epoch}; run the same command again to resume.")
                    break
                stats.update(self.method.epoch_stats(self.last_batch))
                for msg in self.method.epoch_warnings(stats):
                    warnings.warn(f"epoch {epoch}: {msg}")
                extra = (f"checkpoint{epoch:04}.pth",) if self.method.numbered_checkpoint(epoch, args.saveckp_freq) else ()
                bad = self.dataset.bad_images
                log_stats = {**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch}
                if bad:
                    log_stats["bad_images_skipped"] = bad
                # a stop signal that came during the epoch's last steps is honoured before the validation (which
                # may outlast the grace period before SIGKILL); the last epoch still validates: the job is done
                agreed = int(all_reduce_max(stop.signum or 0)[0])
                stopping = bool(agreed) and epoch + 1 < args.epochs
                if stopping:
                    log_stats["validation_skipped"] = "stop signal"
                elif (epoch + 1) % args.val_freq == 0 or epoch + 1 == args.epochs:
                    metrics = self.method.validate(epoch)
                    if metrics:
                        log_stats.update({f"val_{k}": v for k, v in metrics.items()})
                        if self.track_best(metrics):
                            extra = extra + ("checkpoint_best.pth",)
                        if self.best is not None:
                            log_stats[f"best_{self.method.best_metric}"] = self.best
                self.save(epoch + 1, 0, extra, epoch_log=log_stats)
                self.append_log(log_stats)
                if self.tb is not None:
                    for k, v in stats.items():
                        self.tb.add_scalar(f"epoch/{k}", v, epoch)
                    for k, v in log_stats.items():
                        if k.startswith("val_") and isinstance(v, (int, float)):
                            self.tb.add_scalar(f"val/{k[4:]}", v, epoch)
                    self.tb.flush()
                if stopping:
                    self.interrupted, self.stop_signal = True, agreed
                    print(f"Stopped in epoch {epoch} (at its end); run the same command again to resume.")
                    break
                if self.budget_spent():
                    break
        if self.tb is not None:
            self.tb.close()
        barrier()
        total = time.time() - start_time
        print(f"Training time {int(total // 3600)}:{int(total % 3600 // 60):02d}:{int(total % 60):02d}")
        if self.compiled:
            from ..utils.compile import compile_seconds
            self.compile_seconds = compile_seconds()
            print(f"torch.compile: {self.compile_seconds:.1f} s of the training time spent tracing / compiling "
                  f"(cache: {os.environ.get('TORCHINDUCTOR_CACHE_DIR')})")
            if self.dist.is_main:
                self.append_log({"compile_seconds": round(self.compile_seconds, 2)})
        if self.interrupted:  # the job is not done: hand the agreed stop on, now that the checkpoint is written
            from .signals import launcher_stop_handler
            on_interrupt = on_interrupt or launcher_stop_handler()
            if on_interrupt is not None:
                on_interrupt(self.stop_signal)
            else:
                stop.forward(self.stop_signal)  # a handler installed before ours (on every rank)
        return stats
