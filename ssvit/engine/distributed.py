"""Process-group set-up with the torchrun / Slurm environment contract of the originals, plus the
single-process CPU path they lack. NCCL on GPU, Gloo on CPU."""
from __future__ import annotations

import builtins
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from ..utils.distributed import DEFAULT_TIMEOUT_MINUTES


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
    is not usable; under a launcher (``distributed``) or with ``cuda`` an unusable GPU is an error.
    ``LOCAL_RANK >= device_count`` (a cluster that binds one GPU per task, so every task sees only
    its own GPU 0) takes GPU ``LOCAL_RANK % device_count``, as the originals' ``rank % device_count``,
    with a one-line warning."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA device is available")
    count = torch.cuda.device_count()
    index = local_rank
    if local_rank >= count:
        index = local_rank % count
        warnings.warn(f"LOCAL_RANK {local_rank} but {count} GPU(s) visible to this process: using GPU {index} "
                      "(LOCAL_RANK % device count)")
    try:
        probe_cuda(index)
    except Exception as e:  # torch.OutOfMemoryError, torch.AcceleratorError, RuntimeError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if choice == "auto" and not distributed:
            warnings.warn(f"GPU {index} is not usable ({reason}): running on the CPU")
            return torch.device("cpu")
        raise DeviceError(f"GPU {index} is not usable: {reason}") from e
    return torch.device("cuda", index)


def launcher_env(environ=None) -> Optional[tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` of a multi-process launch, or None for a plain process.

    torchrun (and submitit's ``TorchDistributedEnvironment``) set ``RANK`` / ``WORLD_SIZE``; a task of
    an ``srun`` step of several tasks has ``SLURM_STEP_NUM_TASKS > 1``. A plain ``python`` inside an
    ``sbatch --ntasks N`` script sees ``SLURM_NTASKS=N`` and ``SLURM_PROCID=0`` too but is one process:
    it is not a distributed run (the batch step has no ``SLURM_STEP_NUM_TASKS``)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    return None


def init_distributed(device: str = "auto", dist_url: str = "env://",
                     timeout_minutes: Optional[float] = None, backend: str = "auto") -> DistInfo:
    """Initialise from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun) or an ``srun`` step of
    several tasks (``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID``); otherwise a
    single plain process with no process group. ``timeout_minutes`` bounds every collective (and the
    rendezvous); under NCCL the group is bound to this rank's GPU (``device_id``). ``backend``: ``auto``
    = NCCL on GPU, Gloo on CPU; ``gloo`` on GPU too (Gloo handles CUDA tensors: several ranks may then
    share one GPU, which NCCL refuses -- the GPU smoke run's 2-process checks on one GPU)."""
    found = launcher_env()
    if found is None:
        return DistInfo(device=resolve_device(device))
    rank, world, local_rank = found
    if timeout_minutes is not None and timeout_minutes <= 0:
        raise ValueError(f"--dist_timeout must be > 0 minutes, got {timeout_minutes}")
    if dist_url == "env://" and not ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
        raise DeviceError(f"rank {rank} of {world}: MASTER_ADDR / MASTER_PORT are not set (start the job with "
                          "torchrun, or export them in the srun script, or pass --dist_url tcp://HOST:PORT)")
    dev = resolve_device(device, local_rank, distributed=True)
    if not dist.is_initialized():
        if backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"--dist_backend must be auto, nccl or gloo, got {backend!r}")
        if backend == "nccl" and dev.type != "cuda":
            raise DeviceError("--dist_backend nccl needs GPUs (this process runs on the CPU)")
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = timedelta(minutes=timeout_minutes or DEFAULT_TIMEOUT_MINUTES)
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world, rank=rank,
                                timeout=timeout, device_id=dev if backend == "nccl" else None)
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
