"""Checkpoints and resume: the training checkpoint's layout (DINO's plus what exact mid-epoch resume
needs), atomic saves that refuse non-finite weights, resume with every rank's own RNG streams, the
recovery of what a kill between two writes left out, the changed-flags report and the best
checkpoint. Mixed into ``Trainer``."""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Optional

import torch

from ..utils.checkpoint import CheckpointError, load_checkpoint, save_atomic, set_rng_state, torch_rng_state
from ..utils.distributed import all_gather_objects

# flags whose change between the checkpointed run and the resuming one is reported (warning +
# a ``resume_changes`` line in log.txt); the rest (paths, workers, logging) may change freely
_RUN_FLAGS_IGNORED = {"output_dir", "data_path", "dist_url", "local_rank", "num_workers", "print_freq", "tensorboard",
                      "save_every_iters", "save_every_minutes", "max_iters", "device", "download", "config",
                      "max_bad_steps", "on_bad_image", "load_from", "pretrained_weights_ckpt",
                      "compile", "compile_cache_dir", "retain_host_memory", "dist_timeout", "dist_backend"}


class Checkpointing:
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
