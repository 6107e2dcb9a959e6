"""Run by tests/test_train.py under torchrun: train, then dump this rank's weights."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from main_pretrain import get_args_parser  # noqa: E402
from ssvit.config import parse_with_config  # noqa: E402
from ssvit.engine.pretrain import Trainer  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    args = parse_with_config(get_args_parser(argv), argv)
    trainer = Trainer(args)
    trainer.fit()
    state = {"student": trainer.method.student.state_dict(), "teacher": trainer.method.teacher.state_dict(),
             "center": trainer.method.criterion.center, "world_size": trainer.dist.world_size}
    torch.save(state, os.path.join(args.output_dir, f"rank{trainer.dist.rank}.pth"))
