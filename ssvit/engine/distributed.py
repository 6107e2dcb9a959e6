"""Process-group set-up with the torchrun / Slurm environment contract of the originals, plus the
single-process CPU path they lack. NCCL on GPU, Gloo on CPU."""
from __future__ import annotations

import builtins
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..utils.distributed import (all_reduce_flags, barrier, collective_device, get_rank,  # noqa: F401
                                 get_world_size, is_dist, is_main_process)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceError(RuntimeError):
    """The requested device cannot be used (one-line message; entry points exit with status 2)."""


def probe_cuda(index: int) -> None:
    """Allocate and compute a tiny tensor on ``cuda:index``: raises when the GPU is not usable
    (memory held by another job, exclusive-process mode, a broken driver) -- the errors that would
    otherwise surface as a raw CUDA traceback at the first ``.to()``."""
    x = torch.ones(8, device=torch.device("cuda", index))
    (x + x).sum().item()


def resolve_device(choice: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """``--device auto | cpu | cuda`` -> the device of this process.

    ``auto`` in a single process probes the GPU and falls back to the CPU with a warning when it
    is not usable; under a launcher (``distributed``) or with ``cuda`` an unusable GPU is an error,
    and so is ``LOCAL_RANK >= device_count`` (two ranks would otherwise share one GPU)."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA device is available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceError(f"LOCAL_RANK {local_rank} needs GPU {local_rank} but only {count} GPU(s) are visible: "
                          f"start at most {count} processes per node")
    try:
        probe_cuda(local_rank)
    except Exception as e:  # torch.OutOfMemoryError, torch.AcceleratorError, RuntimeError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if choice == "auto" and not distributed:
            warnings.warn(f"GPU {local_rank} is not usable ({reason}): running on the CPU")
            return torch.device("cpu")
        raise DeviceError(f"GPU {local_rank} is not usable: {reason}") from e
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", dist_url: str = "env://") -> DistInfo:
    """Initialise from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun) or ``SLURM_PROCID``
    (+ ``SLURM_NTASKS``); otherwise a single plain process with no process group."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        local_rank = int(os.environ.get("SLURM_LOCALID", 0))
    else:
        return DistInfo(device=resolve_device(device))
    dev = resolve_device(device, local_rank, distributed=True)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world, rank=rank)
        dist.barrier()
    setup_for_distributed(rank == 0)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def setup_for_distributed(is_master: bool) -> None:
    """Only rank 0 prints to stdout, unless ``print(..., force=True)``; stderr always gets through."""
    builtin_print = getattr(builtins, "_ssvit_orig_print", builtins.print)
    builtins._ssvit_orig_print = builtin_print

    def print(*args, **kwargs):
        force = kwargs.pop("force", False)
        if is_master or force or kwargs.get("file") is sys.stderr:
            builtin_print(*args, **kwargs)

    builtins.print = print
