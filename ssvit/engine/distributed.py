"""Process-group set-up with the torchrun / Slurm environment contract of the originals, plus the
single-process CPU path they lack. NCCL on GPU, Gloo on CPU."""
from __future__ import annotations

import builtins
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


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
    dev = resolve_device(device, local_rank)
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


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()
