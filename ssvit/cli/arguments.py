"""The flags a command runs with, parsed as the command itself parses them (``ssvit recipes`` shows them,
``ssvit submit`` checks them before anything is queued)."""
from __future__ import annotations

import argparse
from typing import Optional

#: commands whose flags can be parsed here (the ones ``ssvit submit`` and recipes run)
PARSED_COMMANDS = ("pretrain", "finetune", "linear", "knn", "propagate")


def parse_command_args(command: str, argv: list, resolve: bool = True) -> argparse.Namespace:
    """``argv`` parsed by ``ssvit <command>``'s parser, ``--config`` included (argparse's ``SystemExit(2)``
    on a bad flag, its message printed). ``pretrain`` follows ``ssvit pretrain``'s own redirect (SiT-v1's
    ``--training-mode finetune`` is the finetuning task) and, with ``resolve``, the method's
    ``resolve_args`` (values derived from other flags)."""
    from ssvit.config import parse_with_config
    argv = list(argv)
    if command == "pretrain":
        from ssvit.methods.sit import finetune_argv, is_sit_finetune
        if is_sit_finetune(argv):
            return parse_command_args("finetune", finetune_argv(argv))
        from ssvit.cli.pretrain import get_args_parser
        from ssvit.methods import get_method
        args = parse_with_config(get_args_parser(argv), argv)
        if resolve:
            get_method(args.method).resolve_args(args)
        return args
    if command == "finetune":
        from ssvit.cli.finetune import parse
        return parse(argv)
    if command in ("linear", "knn", "propagate"):
        module = __import__(f"ssvit.cli.{command}", fromlist=["get_args_parser"])
        return parse_with_config(module.get_args_parser(), argv)
    raise ValueError(f"command must be one of {', '.join(PARSED_COMMANDS)}, got {command!r}")


def given(argv: list, *flags: str, config_key: Optional[str] = None) -> bool:
    """One of ``flags`` is on the command line (``--flag V`` or ``--flag=V``), or the ``--config`` file sets
    ``config_key``."""
    for a in argv:
        if a in flags or any(a.startswith(f + "=") for f in flags):
            return True
    if config_key:
        import yaml
        for i, a in enumerate(argv):
            path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a.split("=", 1)[1] \
                if a.startswith("--config=") else None
            if path:
                try:
                    with open(path) as f:
                        cfg = yaml.safe_load(f) or {}
                except (OSError, yaml.YAMLError):
                    return False  # the command's own parse reports the file
                return isinstance(cfg, dict) and config_key in cfg
    return False
