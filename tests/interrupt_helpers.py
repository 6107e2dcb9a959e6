"""Interrupting an in-process ``eval_linear.main`` run at an exact moment (tests of resume)."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_eval_linear_killed_in_epoch(monkeypatch, argv, epoch: int = 1, threads: int = 1) -> None:
    """Run ``eval_linear.main(argv)`` in this process and raise ``KeyboardInterrupt`` at the start of
    ``epoch`` (0-based: the epochs before it, and their checkpoints, complete). ``threads`` intra-op
    threads while it runs (1 = the subprocesses' OMP_NUM_THREADS, so their float reductions match)."""
    sys.path.insert(0, ROOT)
    from ssvit.cli import linear as eval_linear
    real, calls = eval_linear.train_one_epoch, []

    def killed(*a, **k):
        if len(calls) == epoch:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(eval_linear, "train_one_epoch", killed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.raises(KeyboardInterrupt):
            eval_linear.main(argv)
    finally:
        torch.set_num_threads(before)
        monkeypatch.setattr(eval_linear, "train_one_epoch", real)
