"""Pre-emption signals -> "checkpoint at the next optimizer step, then leave".

SIGTERM (torchrun, Slurm at time-out), SIGUSR1 (Slurm ``--signal``) and SIGUSR2 (submitit's
pre-emption / time-out signal) set a flag; the engine agrees on it across ranks every step (one
all-reduce MAX), so all ranks leave the loop at the same iteration and the checkpoint is written
once. A handler that was installed before (submitit's ``checkpoint_and_try_requeue``) is not lost:
``forward()`` calls it once the checkpoint is on disk and the ranks have met at the final barrier,
so submitit requeues the job and the requeued job resumes from that checkpoint.

``catch_early()`` (called by ``main_pretrain.py`` before it imports torch) records a signal that
arrives during start-up -- imports, data and model building take seconds -- instead of letting it
kill the process; the run then stops at its first step boundary with a checkpoint. In a process of a
multi-process launch the start-up can block on its peers (the rendezvous of a job whose other rank
died): there a stop signal during start-up ends the process at once with status 0 -- nothing was
trained since the last checkpoint -- instead of waiting for the launcher's SIGKILL 30 s later. A
watcher thread sees the signal through Python's wakeup fd, which is written even while the main
thread is blocked in C++ (where Python-level handlers do not run).
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_EARLY: dict = {"pending": None, "original": {}, "handler": None, "training": False}
_LAUNCHER: dict = {"on_stop": None}


def set_launcher_stop_handler(fn: Optional[Callable[[int], None]]) -> None:
    """What a run stopped before its end hands the agreed signal to, on every rank (``ssvit submit``:
    submitit's requeue), when the caller of ``Trainer.fit`` gave none -- so that a launcher runs the plain
    command's own entry point (its redirects and modes) and still gets the stop."""
    _LAUNCHER["on_stop"] = fn


def launcher_stop_handler() -> Optional[Callable[[int], None]]:
    return _LAUNCHER["on_stop"]


def launched_with_peers(environ=None) -> bool:
    """This process is one rank of several (torchrun's ``WORLD_SIZE`` > 1, or an ``srun`` step of
    several tasks): the test of ``ssvit.engine.distributed.launcher_env``, without importing torch."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"]) > 1
    return "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def _leave_on_stop_during_start_up(read_fd: int, signals) -> None:
    numbers = {int(s) for s in signals}
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if _EARLY["training"]:  # the training loop honours it (checkpoint, agreed by the ranks)
            return
        if numbers.intersection(data):
            name = signal.Signals(next(b for b in data if b in numbers)).name
            try:
                os.write(2, f"{name} during start-up (rank {os.environ.get('RANK', os.environ.get('SLURM_PROCID', '?'))}"
                            "): leaving; nothing was trained since the last checkpoint\n".encode())
            finally:
                os._exit(0)


def catch_early(signals=STOP_SIGNALS, environ=None) -> None:
    """Record a stop signal received before ``StopRequest`` is entered (see the module doc); in a
    process launched with peers, leave at once on one instead."""
    def handler(signum, frame):
        if _EARLY["pending"] is None:
            _EARLY["pending"] = signum
    _EARLY["handler"] = handler
    for sig in signals:
        try:
            _EARLY["original"][sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass
    if launched_with_peers(environ) and threading.current_thread() is threading.main_thread():
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=_leave_on_stop_during_start_up, args=(r, tuple(signals)), daemon=True,
                         name="ssvit-start-up-stop").start()


class StopRequest:
    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.requested = False
        self.signum: Optional[int] = None
        self._old: dict[int, object] = {}      # the handler to forward a received signal to
        self._restore: dict[int, object] = {}  # the handler to put back on exit (catch_early's recorder:
        #                                        a signal while the process winds down is not fatal)

    def __enter__(self) -> "StopRequest":
        _EARLY["training"] = True  # from here on a stop signal is agreed by the ranks at the next step
        for sig in self.signals:
            try:
                old = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread
                continue
            self._restore[sig] = old
            # behind catch_early's recorder stands the handler the process started with
            self._old[sig] = _EARLY["original"].get(sig, old) if old is _EARLY["handler"] and old else old
        if _EARLY["pending"] is not None:
            self._handler(_EARLY["pending"], None)
            _EARLY["pending"] = None
        return self

    def _handler(self, signum, frame) -> None:
        self.requested = True
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._restore.items():
            signal.signal(sig, old)

    def previous_handler(self, signum: Optional[int] = None) -> Optional[Callable]:
        """The Python handler ``signum`` (default: the received signal) had before (None for SIG_DFL /
        SIG_IGN)."""
        signum = self.signum if signum is None else signum
        old = self._old.get(signum) if signum else None
        return old if callable(old) else None

    def forward(self, signum: Optional[int] = None) -> None:
        """Hand ``signum`` (default: the signal this process received; the engine passes the one the
        ranks agreed on, so a rank that received nothing forwards too) to the handler installed before
        ours (e.g. submitit's requeue, which may ``sys.exit``); nothing when none was installed."""
        signum = self.signum if signum is None else signum
        handler = self.previous_handler(signum)
        if handler is not None:
            handler(signum, None)


def ignore_stop_signals(signals=STOP_SIGNALS) -> None:
    """For the last moments of a finished process: Python's finalisation puts SIG_DFL back behind
    every Python-level handler (SIG_IGN stays), so a late SIGTERM would kill the interpreter while it
    tears down and turn a completed run's exit status into -15."""
    for sig in signals:
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not in the main thread
            pass
