"""The epoch loop: per iteration the schedules into the optimizer groups, the batch to the device
(and the batched augmentation), one ``TrainStep``, logging, non-finite bookkeeping, and the
mid-epoch checkpoints and stops agreed by the ranks. Mixed into ``Trainer``."""
from __future__ import annotations

import sys
import time

import torch
from torch.utils.data import DataLoader

from ..utils.metrics import MetricLogger, Progress
from .signals import StopRequest


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


def batch_seed(seed: int, epoch: int, iteration: int, rank: int) -> int:
    """The seed of a batch's ``--augmentation batched`` draws: a resumed run draws the same crops."""
    return (seed * 1_000_003 + epoch * 10_000_019 + iteration * 7_919 + rank * 104_729) % (2 ** 63)


class EpochLoop:
    def set_schedules(self, it: int) -> None:
        """lr and weight decay of iteration ``it`` into every parameter group, times the group's
        ``lr_scale`` / ``wd_scale`` (as the task built them); a group without ``wd_scale`` keeps its
        own weight decay."""
        for group, (lr_scale, wd_scale) in zip(self.optimizer.param_groups, self.group_scales):
            group["lr"] = self.lr_schedule[it] * lr_scale if lr_scale is not None else self.lr_schedule[it]
            if wd_scale is not None:
                group["weight_decay"] = self.wd_schedule[it] * wd_scale

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

    def budget_spent(self) -> bool:
        return bool(self.args.max_iters) and self.iters_this_run >= self.args.max_iters
