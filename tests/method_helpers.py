"""Helpers shared by the method tests: build a method from CLI flags, train it on a fixed batch."""
import warnings

from ssvit.cli.pretrain import get_args_parser
from ssvit.config import parse_with_config
from ssvit.engine.optim import build_optimizer
from ssvit.engine.trainer import validate_args
from ssvit.methods import get_method


def build_method(flags):
    """(method, args) as ``main_pretrain.py`` would build them (warm-ups clamped, flags checked)."""
    args = parse_with_config(get_args_parser(flags), flags)
    get_method(args.method).resolve_args(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validate_args(args)  # e.g. clamps iBOT's 30-epoch temperature warm-up to a 2-epoch run
    cls = get_method(args.method)
    cls.check_args(args)
    return cls(args), args


def transform_batch(m, args, n=6):
    """A collated batch of ``m``'s own per-image transform (crops; iBOT masks; SERE overlap grids) on
    ``n`` random 20-px RGB images, with the Python and torch seeds fixed first."""
    import random

    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import default_collate
    random.seed(0)
    torch.manual_seed(0)
    tf = m.build_transform(args)
    imgs = [Image.fromarray((np.random.RandomState(i).rand(20, 20, 3) * 255).astype(np.uint8)) for i in range(n)]
    return default_collate([tf(im) for im in imgs])


def train_on_fixed_batch(m, batch, steps, lr=1e-3, check_extra=None, epoch=None, labels=None):
    """AdamW steps + EMA (momentum 0.9) on one batch through the engine's step function (no
    clipping; ``epoch`` defaults to the first one past the last-layer freeze); returns the losses
    (the optimised loss, before the step). ``check_extra`` is called on each step's logged dict."""
    import torch
    from ssvit.engine.step import TrainStep
    opt = build_optimizer("adamw", m.param_groups(m.student))
    for g in opt.param_groups:
        g["lr"] = lr
    step = TrainStep(m, m.student, opt, device=torch.device("cpu"))
    epoch = getattr(m, "freeze_last_layer", 0) if epoch is None else epoch
    losses = []
    for i in range(steps):
        seen = {}
        orig = m.training_step

        def spy(*a, **k):
            loss, extra = orig(*a, **k)
            seen["loss"], seen["extra"] = loss.item(), dict(extra)
            return loss, extra
        m.training_step = spy
        try:
            r = step(batch, epoch, i, 0.9, labels=labels)
        finally:
            del m.training_step
        assert r.stepped, "the step was skipped (non-finite loss)"
        if check_extra is not None:
            check_extra(seen["extra"])
        losses.append(seen["loss"])
    return losses
