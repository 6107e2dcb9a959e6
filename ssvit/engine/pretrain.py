"""The one training engine shared by every self-supervised method.

Per iteration (facebookresearch/dino ``train_one_epoch`` order, see training spec §1): set lr / wd
from the schedules, forward + loss under autocast, stop on a non-finite loss, backward, per-
parameter clipping, last-layer gradient cancelling, optimizer step, EMA teacher update.

Beyond the originals: CPU and single-GPU runs without a launcher, bf16 where native, atomic
checkpoints in DINO's layout that never hold non-finite weights, exact mid-epoch resume (sampler
position + RNG states + per-sample seeded augmentation), SIGTERM / SIGUSR1 / SIGUSR2 pre-emption
agreed by all ranks, non-finite steps skipped (``--max_bad_steps``), collapse monitors, TensorBoard.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import glob
import re
import sys
import time
import warnings
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data import DATASET_INFO, ResumableDistributedSampler, TransformedDataset, build_dataset
from ..methods import SSLMethod, get_method
from ..objectives import cosine_scheduler
from ..utils.distributed import all_reduce_max, all_gather_objects
from ..utils.precision import select_amp_dtype
from ..utils.checkpoint import CheckpointError, load_checkpoint, save_atomic, set_rng_state, torch_rng_state
from .distributed import DistInfo, barrier, init_distributed
from .metrics import MetricLogger, Progress
from .optim import build_optimizer, fused_adamw_wanted
from .signals import StopRequest
from .step import TrainStep


class TrainingDiverged(RuntimeError):
    """``--max_bad_steps`` consecutive non-finite steps: the run stops, the last good checkpoint kept."""


def to_device(obj, device: torch.device):
    """Move the tensors of a (nested) batch -- tensors, lists, tuples, dicts -- to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def fix_random_seeds(seed: int) -> None:
    """Same seed on every rank (as the originals: augmentation streams are not rank-offset)."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)


def batch_seed(seed: int, epoch: int, iteration: int, rank: int) -> int:
    """The seed of a batch's ``--augmentation batched`` draws: a resumed run draws the same crops."""
    return (seed * 1_000_003 + epoch * 10_000_019 + iteration * 7_919 + rank * 104_729) % (2 ** 63)


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


# flags whose change between the checkpointed run and the resuming one is reported (warning +
# a ``resume_changes`` line in log.txt); the rest (paths, workers, logging) may change freely
_RUN_FLAGS_IGNORED = {"output_dir", "data_path", "dist_url", "local_rank", "num_workers", "print_freq", "tensorboard",
                      "save_every_iters", "save_every_minutes", "max_iters", "device", "download", "config",
                      "max_bad_steps", "on_bad_image", "load_from", "pretrained_weights_ckpt",
                      "compile", "compile_cache_dir", "retain_host_memory", "dist_timeout", "dist_backend"}
_TMP_RE = re.compile(r"^(checkpoint\d*\.pth|config\.yaml)\.[A-Za-z0-9_]+\.tmp$")


class Trainer:
    def __init__(self, args: argparse.Namespace, dist_info: Optional[DistInfo] = None):
        get_method(args.method).resolve_args(args)
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
        method_cls = get_method(args.method)
        method_cls.check_args(args)
        self.method: SSLMethod = method_cls(args).to(self.device)

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
            has_bn = self.method.teacher_has_batchnorm() or any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules())
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
                student, device_ids=ids, **self.method.ddp_options())
        else:
            self.student_ddp = student
        self.optimizer = build_optimizer(args.optimizer, self.method.param_groups(self.student_ddp),
                                         fused=fused_adamw_wanted(args.fused_adamw, self.device))
        self.amp_dtype = select_amp_dtype(self.device, args.use_fp16, args.amp_dtype)
        self.step = TrainStep(self.method, self.student_ddp, self.optimizer, device=self.device,
                              amp_dtype=self.amp_dtype, clip_grad=args.clip_grad, accum_iter=args.accum_iter)
        self.scaler = self.step.scaler

        # ---------------- schedules (per iteration; teacher temperature is per epoch, in the loss)
        # linear scaling by the effective batch (SERE: batch x accum_iter x world size)
        bs_total = args.batch_size_per_gpu * args.accum_iter * self.dist.world_size
        own = self.method.schedules(args, self.niter_per_ep, bs_total)
        if own is not None:  # the method's original schedule (e.g. SiT-v1's per-epoch timm cosine)
            self.lr_schedule, self.wd_schedule = own["lr"], own["wd"]
            self.momentum_schedule = own.get("momentum")
        else:
            self.lr_schedule = cosine_scheduler(args.lr * bs_total / 256.0, args.min_lr, args.epochs,
                                                self.niter_per_ep, warmup_epochs=args.warmup_epochs)
            self.wd_schedule = cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs,
                                                self.niter_per_ep)
            self.momentum_schedule = cosine_scheduler(args.momentum_teacher, 1, args.epochs, self.niter_per_ep) \
                if self.method.has_ema_teacher else None

        self.start_epoch, self.start_iter = 0, 0
        self.tb = None
        self.last_save = time.time()
        self.bad_in_a_row = 0
        self.interrupted = False
        self.stop_signal = 0  # the stop signal agreed by the ranks when ``interrupted``
        self.last_batch = None
        self.best: Optional[float] = None  # the method's best_metric so far (checkpoint_best.pth)

    # ------------------------------------------------------------------ files
    def checkpoint_path(self, name: str = "checkpoint.pth") -> str:
        return os.path.join(self.args.output_dir, name)

    def clean_orphan_temp_files(self) -> None:
        """Temp files of writes killed before their rename (``checkpoint*.pth.XXXX.tmp``)."""
        for path in glob.glob(os.path.join(glob.escape(self.args.output_dir), "*.tmp")):
            if _TMP_RE.match(os.path.basename(path)):
                try:
                    os.unlink(path)
                    print(f"Removed an unfinished write: {path}")
                except OSError:
                    pass

    def append_log(self, record: dict) -> None:
        if self.dist.is_main:
            try:
                with open(os.path.join(self.args.output_dir, "log.txt"), "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise CheckpointError(f"cannot write {self.args.output_dir}/log.txt: {e}") from e

    def logged_epochs(self) -> set[int]:
        path = os.path.join(self.args.output_dir, "log.txt")
        epochs: set[int] = set()
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:  # a line cut by a kill
                        continue
                    if isinstance(rec, dict) and "epoch" in rec and "resume_changes" not in rec:
                        epochs.add(int(rec["epoch"]))
        return epochs

    def write_config(self) -> None:
        if self.dist.is_main:
            from ..config import save_config
            try:
                save_config(self.args, os.path.join(self.args.output_dir, "config.yaml"))
            except OSError as e:
                raise CheckpointError(f"cannot write {self.args.output_dir}/config.yaml: {e}") from e

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int, iter_in_epoch: int, rng_per_rank: Optional[list] = None) -> dict:
        """DINO's layout (student with ``module.``, teacher, optimizer, epoch, args, <loss_key>,
        fp16_scaler) plus ``iter_in_epoch``, ``rng`` (this rank's generators) and ``rng_per_rank``
        (every rank's, in rank order: each rank resumes its own streams) for exact resume. ``epoch``
        is the epoch to (re)start; ``iter_in_epoch`` the iterations of it already done; the sampler's
        position follows from both (``set_epoch`` / ``set_start``: the same on every rank)."""
        rng = rng_per_rank[self.dist.rank] if rng_per_rank is not None else torch_rng_state(self.device)
        state = {
            **self.method.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "args": self.args,
            "iter_in_epoch": iter_in_epoch,
            "niter_per_ep": self.niter_per_ep,
            "world_size": self.dist.world_size,
            "rng": rng,
            "rng_per_rank": rng_per_rank if rng_per_rank is not None else [rng],
            "method": self.method.name,
        }
        if self.scaler is not None:
            state["fp16_scaler"] = self.scaler.state_dict()
        if self.best is not None:
            state["best_metric"] = {"name": self.method.best_metric, "value": self.best}
        return state

    def nonfinite_tensors(self) -> list[str]:
        bad = []
        nets = [("student", self.method.student)] + ([("teacher", self.method.teacher)]
                                                      if self.method.has_ema_teacher else [])
        for what, net in nets:
            for name, t in net.state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"{what}.{name}")
        return bad

    def save(self, epoch: int, iter_in_epoch: int, extra_names: tuple[str, ...] = (), epoch_log: Optional[dict] = None) -> bool:
        """Write ``checkpoint.pth`` (then the numbered copies) atomically; refuse weights that are
        not finite (the last good checkpoint stays). ``epoch_log`` (the finished epoch's log.txt
        record) travels in the checkpoint so that a kill before the log line is written loses
        nothing: the resume writes it. Returns whether it wrote."""
        self.last_save = time.time()
        rng_per_rank = all_gather_objects(torch_rng_state(self.device))  # every rank calls save() at the same steps
        if not self.dist.is_main:
            return True
        bad = self.nonfinite_tensors()
        if bad:
            print(f"Not writing a checkpoint: {len(bad)} tensors hold NaN/Inf (e.g. {', '.join(bad[:3])}); "
                  f"the last good checkpoint {self.checkpoint_path()} is kept", file=sys.stderr)
            return False
        state = self.state_dict(epoch, iter_in_epoch, rng_per_rank)
        if epoch_log is not None:
            state["epoch_log"] = epoch_log
            state["numbered_checkpoints"] = list(extra_names)
        try:
            save_atomic(state, self.checkpoint_path())
            for name in extra_names:
                save_atomic(state, self.checkpoint_path(name))
        except OSError as e:
            raise CheckpointError(f"cannot write a checkpoint in {self.args.output_dir}: {e} "
                                  "(the previous checkpoint is kept)") from e
        return True

    def complete_last_epoch(self, ckpt: dict) -> None:
        """After a kill between ``checkpoint.pth`` and the epoch's numbered copy or log line: write
        what the last completed epoch still owes (the numbered file is the same state)."""
        if not self.dist.is_main or "epoch_log" not in ckpt or int(ckpt.get("iter_in_epoch", 0)) != 0:
            return
        for name in ckpt.get("numbered_checkpoints", []):
            if not os.path.isfile(self.checkpoint_path(name)):
                save_atomic(ckpt, self.checkpoint_path(name))
                print(f"Recovered {name} (the run was stopped before writing it)")
        record = ckpt["epoch_log"]
        if record.get("epoch") is not None and int(record["epoch"]) not in self.logged_epochs():
            self.append_log(record)
            print(f"Recovered the log.txt line of epoch {record['epoch']}")

    def report_changed_flags(self, saved: argparse.Namespace) -> None:
        if not isinstance(saved, argparse.Namespace):
            return
        old, new = vars(saved), vars(self.args)
        changes = {}
        for k, v in new.items():
            if k in _RUN_FLAGS_IGNORED or k not in old:
                continue
            a, b = old[k], v
            if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
                a, b = list(a), list(b)
            if a != b:
                changes[k] = {"checkpoint": a, "now": b}
        if changes:
            desc = ", ".join(f"--{k} {c['checkpoint']} -> {c['now']}" for k, c in changes.items())
            warnings.warn(f"resuming with changed flags: {desc}")
            self.append_log({"resume_changes": changes, "epoch": self.start_epoch, "iter_in_epoch": self.start_iter})

    def maybe_resume(self) -> None:
        path = self.method.resume_source(self.args, self.args.output_dir)
        if path is None:
            return
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict):
            raise CheckpointError(f"'{path}' is not a training checkpoint")
        saved_method = ckpt.get("method")  # absent in the original repos' checkpoints
        if saved_method is not None and saved_method != self.method.name:
            raise CheckpointError(f"'{path}' was written by method '{saved_method}', this run is "
                                  f"'{self.method.name}': use another --output_dir")
        try:
            self.method.load_checkpoint_state(ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"'{path}': {e}") from e
        if "optimizer" not in ckpt:
            raise CheckpointError(f"'{path}' is not a training checkpoint (no 'optimizer' entry)")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if isinstance(ckpt.get("best_metric"), dict):
            self.best = ckpt["best_metric"].get("value")
        if self.scaler is not None and "fp16_scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["fp16_scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.start_iter = int(ckpt.get("iter_in_epoch", 0))
        if self.start_iter and (ckpt.get("niter_per_ep") != self.niter_per_ep
                                or ckpt.get("world_size") != self.dist.world_size):
            warnings.warn("batch size or world size changed since the mid-epoch checkpoint: "
                          "restarting that epoch from its beginning")
            self.start_iter = 0
        per_rank = ckpt.get("rng_per_rank")
        if isinstance(per_rank, list) and len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank], self.device)
        elif "rng" in ckpt:  # an older ssvit checkpoint, or another world size: rank 0's streams
            set_rng_state(ckpt["rng"], self.device)
        if path == self.checkpoint_path():
            self.complete_last_epoch(ckpt)
        self.report_changed_flags(ckpt.get("args"))
        print(f"Resumed from {path}: epoch {self.start_epoch}, iteration {self.start_iter} of {self.niter_per_ep}")

    # ------------------------------------------------------------------ training
    def set_schedules(self, it: int) -> None:
        """lr and weight decay of iteration ``it`` into every parameter group, times the group's
        ``lr_scale`` / ``wd_scale``; a group without ``wd_scale`` keeps its weight decay, except the
        first (DINO's rule: the regularised group follows the schedule, the others stay at 0)."""
        for j, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.lr_schedule[it] * group["lr_scale"] if "lr_scale" in group else self.lr_schedule[it]
            if "wd_scale" in group:
                group["weight_decay"] = self.wd_schedule[it] * group["wd_scale"]
            elif j == 0:
                group["weight_decay"] = self.wd_schedule[it]

    def train_one_epoch(self, epoch: int, stop: StopRequest) -> tuple[dict, bool]:
        """Returns the epoch's averaged stats and whether it was interrupted before its end."""
        args, optimizer = self.args, self.optimizer
        loader = DataLoader(self.dataset, sampler=self.sampler, batch_size=args.batch_size_per_gpu,
                            num_workers=args.num_workers, pin_memory=self.device.type == "cuda", drop_last=True,
                            generator=torch.Generator().manual_seed(args.seed + epoch),
                            persistent_workers=False)
        logger = MetricLogger()
        progress = Progress(self.niter_per_ep, f"Epoch: [{epoch}/{args.epochs}]", args.print_freq,
                            enabled=self.dist.is_main, start=self.start_iter)
        interrupted = False
        t_last = time.time()
        k = args.accum_iter  # gradient accumulation (SERE's --accum_iter): one step every k iterations
        bad_steps = 0
        optimizer.zero_grad(set_to_none=True)
        for i, (batch, labels, index) in enumerate(loader, start=self.start_iter):
            if i >= self.niter_per_ep:
                break
            it = self.niter_per_ep * epoch + i
            if i % k == 0:
                self.set_schedules(it)
            batch, labels, index = to_device((batch, labels, index), self.device)
            if self.batch_transform is not None:  # the draws depend on (seed, epoch, iteration, rank) only
                batch = self.batch_transform(batch, torch.Generator().manual_seed(
                    batch_seed(args.seed, epoch, i, self.dist.rank)))
            self.last_batch = batch
            momentum = float(self.momentum_schedule[it]) if self.momentum_schedule is not None else 0.0
            # a time-based checkpoint is due on this rank's clock: agreed in the step, so all ranks save together
            save_due = bool(args.save_every_minutes) and time.time() - self.last_save >= 60 * args.save_every_minutes
            r = self.step(batch, epoch, i, momentum, stop.signum or 0, labels=labels, index=index, save_due=save_due)
            now = time.time()
            if r.skipped:
                bad_steps += 1
                self.bad_in_a_row += 1
                print(f"Non-finite loss or gradient ({r.loss}) at epoch {epoch} iteration {i}: update skipped "
                      f"({self.bad_in_a_row} in a row, --max_bad_steps {args.max_bad_steps})", file=sys.stderr)
                if self.bad_in_a_row >= args.max_bad_steps:
                    raise TrainingDiverged(
                        f"{self.bad_in_a_row} consecutive non-finite steps at epoch {epoch} iteration {i}: training "
                        f"stopped; the last good checkpoint is {self.checkpoint_path()} (lower --lr, raise "
                        "--warmup_epochs or --clip_grad, or --use_fp16 false)")
            else:
                if r.stepped:
                    self.bad_in_a_row = 0
                # the largest lr and weight decay over the groups (DINO: those of the first group)
                logger.update(**{"loss": r.loss, **r.extra, "lr": max(g["lr"] for g in optimizer.param_groups),
                                 "wd": max(g["weight_decay"] for g in optimizer.param_groups)})
            progress.step(i, logger, now - t_last, args.batch_size_per_gpu * self.dist.world_size)
            t_last = now
            if self.tb is not None and it % args.print_freq == 0 and not r.skipped:
                self.tb.add_scalar("iter/loss", r.loss, it)
                self.tb.add_scalar("iter/lr", optimizer.param_groups[0]["lr"], it)
            self.iters_this_run += 1

            done = i + 1
            step_boundary = done % k == 0
            if done < self.niter_per_ep and step_boundary:  # checkpoints only between optimizer steps
                halt = bool(r.stop) or self.budget_spent()  # r.stop: agreed by every rank this iteration
                # no periodic save inside a streak of skipped steps: the last good checkpoint stays
                periodic = self.bad_in_a_row == 0 and (
                    bool(args.save_every_iters and done % args.save_every_iters == 0) or r.save)
                if halt or periodic:
                    self.save(epoch, done)
                if halt:
                    interrupted = True
                    if r.stop:
                        self.interrupted, self.stop_signal = True, r.stop
                    break
        progress.close()
        self.start_iter = 0
        logger.synchronize_between_processes()
        stats = logger.global_avgs()
        stats.pop("img/s", None)
        stats["img/s"] = progress.iter_time.count and (
            args.batch_size_per_gpu * self.dist.world_size / max(progress.iter_time.global_avg, 1e-9))
        if bad_steps:
            stats["bad_steps"] = bad_steps
        print("Averaged stats:", "  ".join(f"{k}: {v:.6g}" for k, v in stats.items()))
        return stats, interrupted

    def fit(self, on_interrupt: Optional[Callable[[int], None]] = None) -> dict:
        """Resume if ``output_dir`` holds a checkpoint, write ``config.yaml``, train to ``--epochs``
        (or until a stop signal / ``--max_iters``). ``self.interrupted``: a stop signal (on any rank)
        ended the run before its last epoch -- the checkpoint is written, the job is not done; then
        ``on_interrupt(signal)`` runs on every rank with the agreed signal (a launcher's requeue),
        else the handler that signal had before the run (``StopRequest.forward``). A finished run
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
                stats.update(self.method.collapse_stats(self.last_batch))
                for msg in self.method.collapse_warnings(stats):
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
            if on_interrupt is not None:
                on_interrupt(self.stop_signal)
            else:
                stop.forward(self.stop_signal)  # a handler installed before ours (on every rank)
        return stats

    def track_best(self, metrics: dict) -> bool:
        """Update the best value of the method's ``best_metric``; True when this epoch improved it."""
        name = self.method.best_metric
        if name is None or name not in metrics:
            return False
        value = float(metrics[name])
        better = self.best is None or (value > self.best if self.method.best_mode == "max" else value < self.best)
        if better:
            self.best = value
        return better

    def budget_spent(self) -> bool:
        return bool(self.args.max_iters) and self.iters_this_run >= self.args.max_iters
