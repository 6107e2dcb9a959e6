"""The ordered end of a process, the same in every entry point and on every rank.

A finished run: every rank meets at a barrier (no rank closes its connections while a peer still
talks to it), then ``destroy_process_group`` -- before the interpreter's own teardown, which would
otherwise destroy the process group's C++ objects in no fixed order while its Gloo / NCCL threads
still run (the cause of the SIGABRT of a finished 2-rank run, see RELIABILITY.md).

A failed rank: its error goes to stderr once, prefixed with the rank, and is recorded in the job's
rendezvous store; the process then leaves at once with ``os._exit`` (no barrier a dead job would never
reach, no destructor that waits for peers). A peer whose collective then fails finds that record and
leaves quietly with the same status, so a job prints its root cause once, not a cascade of
"connection closed" errors. Under torchrun the launcher, under ``srun --kill-on-bad-exit`` Slurm,
stops the remaining ranks; without either, their next collective fails within seconds (Gloo) or at
``--dist_timeout`` (NCCL).
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Optional

import torch.distributed as dist

from .distributed import get_rank, is_dist

FAILED_KEY = "ssvit/failed_rank"


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # no default group, or a torch without the accessor
        return None


def record_failure(message: str) -> None:
    """Write ``message`` (the failing rank's one line) into the rendezvous store, first writer wins."""
    store = _store()
    if store is None:
        return
    try:
        store.compare_set(FAILED_KEY, "", message)
    except Exception:  # the store's host is gone too
        pass


def failure_elsewhere() -> Optional[str]:
    """The line recorded by another rank that failed before this one, or None."""
    store = _store()
    if store is None:
        return None
    try:
        if store.check([FAILED_KEY]):
            return store.get(FAILED_KEY).decode(errors="replace")
    except Exception:
        pass
    return None


def finish() -> None:
    """A run that completed on this rank: barrier, then tear the process group down."""
    if not is_dist():
        return
    dist.barrier()
    dist.destroy_process_group()


def fail_now(line: str, status: int, detail: Optional[str] = None) -> None:
    """Leave a distributed process at once after an error on this rank (see the module doc):
    ``line`` (one line) on stderr -- unless another rank's failure caused this one --, then
    ``os._exit(status)``. ``detail`` (a traceback) is printed before it."""
    other = failure_elsewhere()
    if other is None:
        record_failure(f"rank {get_rank()}: {line}")
        if detail:
            sys.stderr.write(detail)
        sys.stderr.write(f"rank {get_rank()}: {line}\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)


def format_traceback(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))
