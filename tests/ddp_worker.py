"""Run by the tests under torchrun: train, then dump this rank's weights.

Every tensor handed to ``torch.distributed`` collectives is checked to live on the backend's
device (``collective_device()``); the worker writes its pid to ``output_dir/pid<rank>`` so a test
can signal one rank."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssvit.cli.pretrain import get_args_parser, make_trainer  # noqa: E402
from ssvit.cli import exit_status  # noqa: E402
from ssvit.config import parse_with_config  # noqa: E402
from ssvit.utils.distributed import collective_device  # noqa: E402
import toy_methods  # noqa: E402,F401  (the toy tasks, for the engine-contract tests)

CHECKED = {"n": 0}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


def guard(fn):
    def wrapped(*args, **kwargs):
        for t in _tensors(list(args) + list(kwargs.values())):
            if t.device != collective_device():
                raise RuntimeError(f"collective {fn.__name__} got a tensor on {t.device}, backend device "
                                   f"{collective_device()}")
            CHECKED["n"] += 1
        return fn(*args, **kwargs)
    return wrapped


for name in ("all_reduce", "all_gather", "broadcast", "reduce", "all_gather_into_tensor"):
    setattr(dist, name, guard(getattr(dist, name)))

def main(argv):
    args = parse_with_config(get_args_parser(argv), argv)
    trainer = make_trainer(args)
    m = trainer.method
    init = {"student": {k: v.clone() for k, v in m.student.state_dict().items()},
            "teacher": {k: v.clone() for k, v in m.teacher.state_dict().items()} if m.has_ema_teacher else {}}
    with open(os.path.join(args.output_dir, f"pid{trainer.dist.rank}"), "w") as f:
        f.write(str(os.getpid()))
    if os.environ.get("SSVIT_TEST_RANK_SEED"):  # each rank's generators on a stream of its own
        torch.manual_seed(int(os.environ["SSVIT_TEST_RANK_SEED"]) + 1000 * trainer.dist.rank)
    fail_at = os.environ.get("SSVIT_TEST_FAIL_AT")  # "RANK:ITER": that rank raises at that iteration
    if fail_at:
        rank, it = (int(v) for v in fail_at.split(":"))
        if trainer.dist.rank == rank:
            step = trainer.step

            def failing_step(batch, epoch, i, *a, **kw):
                if i == it:
                    raise RuntimeError(f"injected failure at iteration {i}")
                return step(batch, epoch, i, *a, **kw)
            trainer.step = failing_step
    trainer.fit()
    state = {"init": init, "student": m.student.state_dict(), "teacher": m.teacher.state_dict() if m.has_ema_teacher else {},
             "center": getattr(m.criterion, "center", None), "criterion": m.criterion.state_dict(),
             "world_size": trainer.dist.world_size,
             "collective_tensors_checked": CHECKED["n"], "interrupted": trainer.interrupted}
    torch.save(state, os.path.join(args.output_dir, f"rank{trainer.dist.rank}.pth"))


if __name__ == "__main__":
    # the entry points' exit path: ordered shutdown on success, one line and a fast exit on error
    from ssvit.cli.main import leave
    leave(exit_status(lambda: main(sys.argv[1:]), (ValueError,)))
