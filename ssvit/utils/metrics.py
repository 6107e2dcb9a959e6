"""Meters and console progress in the originals' ``MetricLogger`` format, plus img/s, and top-k accuracy."""
from __future__ import annotations

import datetime
import sys
import time
from collections import defaultdict, deque

import torch
import torch.distributed as dist

from .distributed import collective_device, is_dist


class SmoothedValue:
    """Window median / global average of a scalar stream (window 20, as the originals)."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.6f} ({global_avg:.6f})"):
        self.deque: deque = deque(maxlen=window_size)
        self.total, self.count, self.fmt = 0.0, 0, fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        if not is_dist():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=collective_device())
        dist.all_reduce(t)
        count, total = t.tolist()
        self.count, self.total = int(count), total

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque)).median().item()) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    def __init__(self, delimiter: str = "  "):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs) -> None:
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v))

    def synchronize_between_processes(self) -> None:
        """Sum every meter's count and total over the ranks in one all-reduce (same meters, same
        order on every rank: they are updated with the same keys)."""
        if not is_dist() or not self.meters:
            return
        meters = list(self.meters.values())
        t = torch.tensor([v for m in meters for v in (m.count, m.total)], dtype=torch.float64,
                         device=collective_device())
        dist.all_reduce(t)
        vals = t.tolist()
        for j, m in enumerate(meters):
            m.count, m.total = int(vals[2 * j]), vals[2 * j + 1]

    def global_avgs(self) -> dict[str, float]:
        return {k: m.global_avg for k, m in self.meters.items()}

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())


class Progress:
    """Prints ``Epoch: [e/E]  [ i/N]  eta: ...  loss: ...  lr: ...  img/s: ...`` every ``print_freq``
    iterations (and the last); on a terminal the line redraws in place as a progress bar."""

    def __init__(self, total: int, header: str, print_freq: int = 10, enabled: bool = True, start: int = 0):
        self.total, self.header, self.print_freq, self.enabled = total, header, print_freq, enabled
        self.start_iter = start
        self.tty = enabled and sys.stdout.isatty()
        self.t0 = time.time()
        self.iter_time = SmoothedValue(fmt="{avg:.4f}")

    def step(self, i: int, logger: MetricLogger, iter_seconds: float, images: int) -> None:
        self.iter_time.update(iter_seconds)
        logger.meters["img/s"].update(images / max(iter_seconds, 1e-9))
        if not self.enabled or (i % self.print_freq != 0 and i != self.total - 1):
            return
        eta = datetime.timedelta(seconds=int(self.iter_time.global_avg * (self.total - i - 1)))
        width = len(str(self.total))
        parts = [self.header, f"[{i:>{width}}/{self.total}]", f"eta: {eta}"]
        parts += [f"{k}: {m.median:.6g} ({m.global_avg:.6g})" for k, m in logger.meters.items()]
        parts.append(f"time: {self.iter_time.global_avg:.4f}")
        if torch.cuda.is_available():
            parts.append(f"max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}")
        line = "  ".join(parts)
        if self.tty:
            done = int(20 * (i + 1) / self.total)
            print("\r[" + "#" * done + "." * (20 - done) + "] " + line, end="\n" if i == self.total - 1 else "",
                  flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            n = max(self.iter_time.count, 1)
            total = time.time() - self.t0
            print(f"{self.header} Total time: {datetime.timedelta(seconds=int(total))} ({total / n:.6f} s / it)",
                  flush=True)


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """Percentages of samples whose target is among the top-k logits, for each k (DINO's ``utils.accuracy``)."""
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0) for k in topk]
