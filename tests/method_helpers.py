"""Helpers shared by the method tests: build a method from CLI flags, train it on a fixed batch."""
import warnings

from main_pretrain import get_args_parser
from ssvit.config import parse_with_config
from ssvit.engine.optim import build_optimizer
from ssvit.engine.pretrain import validate_args
from ssvit.methods import get_method


def build_method(flags):
    """(method, args) as ``main_pretrain.py`` would build them (warm-ups clamped, flags checked)."""
    args = parse_with_config(get_args_parser(flags), flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validate_args(args)  # e.g. clamps iBOT's 30-epoch temperature warm-up to a 2-epoch run
    cls = get_method(args.method)
    cls.check_args(args)
    return cls(args), args


def train_on_fixed_batch(m, batch, steps, lr=1e-3, check_extra=None):
    """AdamW steps + EMA (momentum 0.9) on one batch; returns the losses. ``check_extra`` is called
    on each step's logged dict."""
    opt = build_optimizer("adamw", m.param_groups(m.student))
    for g in opt.param_groups:
        g["lr"] = lr
    losses = []
    for _ in range(steps):
        loss, extra = m.training_step(m.student, batch, 0)
        if check_extra is not None:
            check_extra(extra)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_teacher(0.9)
        losses.append(loss.item())
    return losses
