#!/usr/bin/env python
"""Self-supervised pretraining: ``python main_pretrain.py --method dino [original main_dino.py flags]``.

Runs as one plain process (CPU or one GPU) or under ``torchrun --nproc_per_node N`` (DDP; NCCL on
GPU, Gloo on CPU). Re-running the same command resumes from ``output_dir/checkpoint.pth``.
"""
from __future__ import annotations

import argparse
import sys

if __name__ == "__main__":  # before torch is imported: a pre-emption signal during start-up is not lost
    from ssvit.engine.signals import catch_early, ignore_stop_signals
    catch_early()

from ssvit.cli import exit_status  # noqa: E402
from ssvit.config import build_pretrain_parser, parse_with_config, read_yaml_config  # noqa: E402
from ssvit.data import DataError  # noqa: E402
from ssvit.engine.checkpoint import CheckpointError  # noqa: E402
from ssvit.engine.distributed import DeviceError  # noqa: E402
from ssvit.methods import get_method  # noqa: E402


def get_args_parser(argv=None) -> argparse.ArgumentParser:
    parser = build_pretrain_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="dino")
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    method = known.method
    if known.config and method == "dino" and "--method" not in (argv or []):
        method = read_yaml_config(known.config, parser).get("method", method)
    try:
        get_method(method).add_args(parser)
    except ValueError as e:
        parser.error(str(e))
    return parser


def run_as_command(fn) -> int:
    """``fn()`` with the pretraining commands' exit statuses: 0 on success; bad input (a flag, the data,
    the checkpoint folder, the device) a one-line ``error:`` and 2; a diverged run a one-line error
    and 1, as the originals on a non-finite loss."""
    from ssvit.engine.pretrain import TrainingDiverged
    return exit_status(fn, (DataError, CheckpointError, DeviceError, ValueError, OSError), fatal=(TrainingDiverged,))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ssvit.methods.sit import finetune_argv, is_sit_finetune
    if is_sit_finetune(argv):  # SiT-v1's main.py --training-mode finetune: the finetuning task
        import main_finetune
        return main_finetune.main(finetune_argv(argv))
    parser = get_args_parser(argv)
    args = parse_with_config(parser, argv)
    from ssvit.engine.pretrain import Trainer

    def train():
        trainer = Trainer(args)
        if getattr(args, "validate_only", False):  # e.g. RelViT's --mode validation
            trainer.maybe_resume()
            trainer.method.validate(trainer.start_epoch)
            return
        trainer.fit()
    return run_as_command(train)


if __name__ == "__main__":
    status = main()
    ignore_stop_signals()  # the run is over: a late stop signal must not turn its exit status into -15
    sys.exit(status)
