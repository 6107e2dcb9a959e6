"""torch.distributed helpers every layer uses (the engine, the losses, the evaluation): all of them
work without a process group, and every tensor they hand to a collective lives on the backend's
device (NCCL: the current GPU; Gloo: the CPU)."""
from __future__ import annotations

import torch
import torch.distributed as dist


#: ``--dist_timeout``'s default (minutes): how long a collective may wait for a rank before the job
#: fails (torch's own defaults: 10 min under NCCL, 30 under Gloo)
DEFAULT_TIMEOUT_MINUTES = 30.0


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


def collective_device() -> torch.device:
    """Where tensors handed to ``torch.distributed`` must live: the current GPU for NCCL (it only
    handles CUDA tensors), the CPU for Gloo."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_flags(*flags: bool) -> list[bool]:
    """Logical OR of each flag over all ranks (one all-reduce MAX on the backend's device); the
    flags unchanged without a process group. Every rank must call it at the same point."""
    return [bool(v) for v in all_reduce_max(*(float(bool(f)) for f in flags))]


def all_reduce_max(*values: float) -> list[float]:
    """The maximum of each value over all ranks (one all-reduce MAX on the backend's device); the
    values unchanged without a process group. Every rank must call it at the same point."""
    if not is_dist() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group);
    every rank must call it at the same point."""
    if not is_dist() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place when a process group is up; identity otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
