"""A pretraining run at a glance: the training-loss curve read back from the run folder, and one
picture with the k-NN top-1 of each feature set beside that curve (``summary.png``).

``training_loss_curve(output_dir)`` reads the per-iteration ``iter/loss`` scalars that the engine
writes to TensorBoard (``output_dir/tb``, every ``--print_freq`` iterations; all event files, so a
resumed run gives one curve, the latest value winning where a step was logged twice). Without
TensorBoard events it falls back to the per-epoch ``train_loss`` of ``log.txt``.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Mapping, Optional, Sequence


def training_loss_curve(output_dir: str, tag: str = "iter/loss") -> tuple[list[int], list[float], str]:
    """(steps, losses, unit) of a run folder, sorted by step; unit is ``'iteration'`` (TensorBoard)
    or ``'epoch'`` (``log.txt``); empty lists when the folder holds neither."""
    events = sorted(glob.glob(os.path.join(output_dir, "tb", "events.out.tfevents.*")))
    points: dict[int, float] = {}
    if events:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        for path in events:  # file names carry the creation time: later files override earlier steps
            for event in EventFileLoader(path).Load():
                for value in event.summary.value:
                    if value.tag != tag:
                        continue
                    if value.HasField("simple_value"):
                        points[int(event.step)] = float(value.simple_value)
                    elif value.HasField("tensor"):
                        import numpy as np
                        from tensorboard.util import tensor_util
                        points[int(event.step)] = float(np.asarray(tensor_util.make_ndarray(value.tensor)))
        if points:
            steps = sorted(points)
            return steps, [points[s] for s in steps], "iteration"
    log = os.path.join(output_dir, "log.txt")
    if os.path.isfile(log):
        with open(log) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "train_loss" in rec and "epoch" in rec:
                    points[int(rec["epoch"])] = float(rec["train_loss"])
    steps = sorted(points)
    return steps, [points[s] for s in steps], "epoch"


def save_summary_figure(top1: Mapping[str, float], curve: tuple[Sequence[int], Sequence[float], str], path: str,
                        title: Optional[str] = None, reference: Optional[str] = "raw_pixels") -> str:
    """Two panels: horizontal bars of ``top1`` (name -> %, in the given order; the ``reference``
    row's value drawn as a dashed line across the bars) and the training-loss curve. Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    names = list(top1)
    values = [float(top1[n]) for n in names]
    colours = ["#4c72b0" if n != reference else "#8c8c8c" for n in names]
    ypos = list(range(len(names)))[::-1]
    ax1.barh(ypos, values, color=colours)
    for y, v in zip(ypos, values):
        ax1.text(v + 0.5, y, f"{v:.2f}", va="center", fontsize=9)
    if reference in top1:
        ax1.axvline(float(top1[reference]), color="#c44e52", ls="--", lw=1)
    ax1.set_yticks(ypos, [n.replace("_", " ") for n in names])
    ax1.set_xlim(0, 105)
    ax1.set_xlabel("k-NN top-1 (%)")
    ax1.set_title("test-set accuracy")
    steps, losses, unit = curve
    if steps:
        ax2.plot(steps, losses, marker="." if len(steps) < 60 else None, color="#4c72b0")
    else:
        ax2.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel(unit)
    ax2.set_ylabel("training loss")
    ax2.set_title("pretraining loss")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path
