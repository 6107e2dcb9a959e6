"""The ``ssvit`` command: ``ssvit <task> [the original entry point's flags]``.

Each task is a module of ``ssvit.cli`` with a ``cli(argv) -> exit status``; the repository's root scripts
(``main_pretrain.py``, ``main_finetune.py``, ``eval_linear.py``, ``eval_knn.py``) run the same
modules. Training tasks record a stop signal that arrives while torch is imported (``catch_early``)
and, once finished, ignore late ones so that the exit status stays the run's.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import NamedTuple, Optional


class Command(NamedTuple):
    module: str
    trains: bool  # catch stop signals from the start (pre-emption during start-up)
    help: str


COMMANDS: dict[str, Command] = {
    "pretrain": Command("ssvit.cli.pretrain", True, "self-supervised pretraining, any --method (main_dino.py's flags)"),
    "finetune": Command("ssvit.cli.finetune", True, "supervised finetuning (MAE main_finetune.py's flags)"),
    "linear": Command("ssvit.cli.linear", False, "linear probe on frozen features (DINO / iBOT / EsViT eval_linear.py)"),
    "knn": Command("ssvit.cli.knn", False, "weighted k-NN on frozen features (DINO eval_knn.py)"),
    "submit": Command("ssvit.cli.submit", False,
                      "any of pretrain, finetune, linear, knn, propagate as a Slurm job (DINO run_with_submitit.py)"),
    "attention": Command("ssvit.cli.attention", False, "CLS self-attention maps (DINO visualize_attention.py)"),
    "propagate": Command("ssvit.cli.propagate", False,
                         "segmentation propagation: --layout davis (DINO eval_video_segmentation.py) or ipace"),
    "seg-metrics": Command("ssvit.cli.segmentation_metrics", False, "DAVIS J&F / I-PACE mIoU of propagated masks"),
    "ssl-losses": Command("ssvit.cli.ssl_losses", False, "SiT-v1's pretext losses of a checkpoint as metrics"),
    "analyze": Command("ssvit.cli.analyze", False, "EsViT's correspondence / attention / entropy analyses"),
    "make-sequences": Command("ssvit.cli.synthetic_sequences", False, "synthetic DAVIS / I-PACE sequences (tests, demos)"),
    "esvit-mnodes": Command("ssvit.cli.esvit_mnodes", False, "EsViT's main_esvit_mnodes.py: one node of a multi-node run"),
    "relvit-script": Command("ssvit.cli.relvit_scripts", True, "RelViT's upstream.sh / downstream.sh seed scripts"),
    "recipes": Command("ssvit.cli.recipes", False, "the originals' published recipes (configs/): list, or show one"),
    "demo": Command("ssvit.cli.demo", True, "the main job: DINO on Fashion-MNIST, then k-NN, attention and a summary"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items())
    return f"usage: ssvit <command> [flags]  (ssvit <command> --help for its flags)\n\ncommands:\n{rows}\n  methods" \
           f"{' ' * (width - 7)}  list the registered --method names"


def run(name: str, argv: Optional[list] = None) -> int:
    """Run command ``name`` with ``argv``; returns its exit status."""
    command = COMMANDS[name]
    if command.trains:
        from ssvit.engine.signals import catch_early
        catch_early()  # before torch is imported
    status = importlib.import_module(command.module).cli(argv)
    if command.trains:
        from ssvit.engine.signals import ignore_stop_signals
        ignore_stop_signals()  # the run is over: a late stop signal must not turn its exit status into -15
    return int(status or 0)


def leave(status: int) -> None:
    """The last line of a command's process. One launched with peers (torchrun, an srun step) ends with
    ``os._exit`` once its output is flushed: its process group is already destroyed
    (``ssvit.utils.shutdown.finish``), and the interpreter's own finalisation would free whatever still
    references it -- a DDP reducer held by a module global or a reference cycle, Gloo's last work
    objects -- in no fixed order, which now and then aborts a finished rank ("terminate called without
    an active exception", exit -6: 4 of 30 finished 2-rank runs beside a busy loop, 0 of 30 with this
    exit; RELIABILITY.md). A plain process leaves through ``sys.exit`` (atexit handlers run)."""
    from ssvit.engine.signals import launched_with_peers
    if launched_with_peers():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe: nothing left to lose
                pass
        os._exit(status)
    sys.exit(status)


def run_script(name: str) -> None:
    """The root scripts' ``__main__``: run the command, then ``leave`` with its status."""
    leave(run(name, sys.argv[1:]))


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "methods":
        from ssvit.methods import list_methods
        print("\n".join(list_methods()))
        return 0
    if name not in COMMANDS:
        print(f"ssvit: error: unknown command '{name}' (one of: {', '.join(COMMANDS)}, methods)", file=sys.stderr)
        return 2
    return run(name, rest)


def console() -> None:
    """The ``ssvit`` console script."""
    leave(main())
