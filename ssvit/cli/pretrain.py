"""``ssvit pretrain`` / ``python main_pretrain.py``: self-supervised pretraining, ``--method dino`` (default)
or any registered method, with the original entry point's flags (DINO's ``main_dino.py`` and each
method's own).

Runs as one plain process (CPU or one GPU) or under ``torchrun --nproc_per_node N`` (DDP; NCCL on
GPU, Gloo on CPU). Re-running the same command resumes from ``output_dir/checkpoint.pth``.
"""
from __future__ import annotations

import argparse
import sys

from ssvit.cli import exit_status
from ssvit.config import build_pretrain_parser, parse_with_config, read_yaml_config
from ssvit.data import DataError
from ssvit.utils.checkpoint import CheckpointError
from ssvit.engine.distributed import DeviceError
from ssvit.methods import get_method


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


def make_trainer(args: argparse.Namespace):
    """The engine for ``args``: ``--method`` resolved in the registry, its task class handed to ``Trainer``."""
    from ssvit.engine.trainer import Trainer
    return Trainer(args, get_method(args.method))


def run_as_command(fn) -> int:
    """``fn()`` with the pretraining commands' exit statuses: 0 on success; bad input (a flag, the data,
    the checkpoint folder, the device) a one-line ``error:`` and 2; a diverged run a one-line error
    and 1, as the originals on a non-finite loss."""
    from ssvit.engine.loop import TrainingDiverged
    return exit_status(fn, (DataError, CheckpointError, DeviceError, ValueError, OSError), fatal=(TrainingDiverged,))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ssvit.methods.sit import finetune_argv, is_sit_finetune
    if is_sit_finetune(argv):  # SiT-v1's main.py --training-mode finetune: the finetuning task
        from ssvit.cli import finetune
        return finetune.main(finetune_argv(argv))
    parser = get_args_parser(argv)
    args = parse_with_config(parser, argv)

    def train():
        trainer = make_trainer(args)
        if getattr(args, "validate_only", False):  # e.g. RelViT's --mode validation
            trainer.maybe_resume()
            trainer.method.validate(trainer.start_epoch)
            return
        trainer.fit()
    return run_as_command(train)


cli = main
