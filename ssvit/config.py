"""Command-line flags (the originals' names and defaults) with YAML configs as defaults.

Precedence: built-in defaults < ``--config FILE.yaml`` < flags on the command line. The merged
configuration is written to ``output_dir/config.yaml`` by the entry points.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import yaml

from .utils.distributed import DEFAULT_TIMEOUT_MINUTES


def bool_flag(s) -> bool:
    """Parse on/true/1 and off/false/0 (case-insensitive), as the originals' ``bool_flag``."""
    if isinstance(s, bool):
        return s
    if str(s).lower() in {"off", "false", "0"}:
        return False
    if str(s).lower() in {"on", "true", "1"}:
        return True
    raise argparse.ArgumentTypeError(f"invalid value for a boolean flag: {s!r} (use true/false)")


def auto_bool(s) -> str:
    """A three-way flag: ``auto``, or a boolean in ``bool_flag``'s spellings (YAML's true / false too),
    returned as ``'auto'``, ``'true'`` or ``'false'``."""
    if isinstance(s, str) and s.lower() == "auto":
        return "auto"
    return "true" if bool_flag(s) else "false"


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The flags the engine reads for every task, with ``main_dino.py``'s names and defaults (each task sets
    its own defaults with ``parser.set_defaults``). A method's own flags -- DINO's head, teacher and
    multi-crop ones included (``ssvit.methods.dino_family.add_dino_args``) -- come from its ``add_args``."""
    p = parser
    p.add_argument("--arch", default="vit_small", type=str, help="backbone name (see ssvit.models.list_backbones)")
    p.add_argument("--patch_size", default=16, type=int)
    p.add_argument("--use_fp16", type=bool_flag, default=True, help="mixed precision on GPU (ignored on CPU)")
    p.add_argument("--weight_decay", type=float, default=0.04)
    p.add_argument("--weight_decay_end", type=float, default=0.4)
    p.add_argument("--clip_grad", type=float, default=3.0)
    p.add_argument("--batch_size_per_gpu", default=64, type=int)
    p.add_argument("--epochs", default=100, type=int)
    p.add_argument("--lr", default=0.0005, type=float, help="peak lr for a total batch of 256 (linear scaling)")
    p.add_argument("--warmup_epochs", default=10, type=int)
    p.add_argument("--min_lr", type=float, default=1e-6)
    p.add_argument("--optimizer", default="adamw", type=str, choices=["adamw", "sgd", "lars"])
    p.add_argument("--drop_path_rate", type=float, default=0.1)
    p.add_argument("--data_path", default="/path/to/imagenet/train/", type=str)
    p.add_argument("--output_dir", default=".", type=str)
    p.add_argument("--saveckp_freq", default=20, type=int)
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--num_workers", default=10, type=int)
    p.add_argument("--dist_url", default="env://", type=str)
    p.add_argument("--local_rank", "--local-rank", default=0, type=int, help="absorbed; torchrun sets LOCAL_RANK")


def add_ssvit_args(parser: argparse.ArgumentParser) -> None:
    """ssvit's additions (none changes an original default)."""
    p = parser
    p.add_argument("--method", default="dino", type=str, help="self-supervised method")
    p.add_argument("--config", default=None, type=str, help="YAML file of flag defaults; CLI flags override")
    p.add_argument("--global_crops_size", default=224, type=int, help="training image (global crop) size")
    p.add_argument("--dataset", default="imagefolder", type=str,
                   choices=["imagefolder", "imagenet1k", "fashion_mnist", "cifar10", "cifar100", "stl10", "stl10_unlabeled",
                            "svhn", "flowers102", "pets", "aircraft", "cars", "tinyimagenet", "imagenet100", "synthetic"])
    p.add_argument("--download", default=False, type=bool_flag, help="let torchvision download the dataset")
    p.add_argument("--synthetic_size", default=256, type=int, help="images in --dataset synthetic")
    p.add_argument("--device", default="auto", type=str, choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp_dtype", default="fp16", type=str, choices=["auto", "bf16", "fp16"],
                   help="mixed-precision dtype on GPU with --use_fp16: fp16 + GradScaler (the originals'), bf16, "
                        "or auto = bf16 where the GPU has it natively (not emulated), else fp16")
    p.add_argument("--tf32", default=True, type=bool_flag,
                   help="let fp32 matmuls/convolutions on GPU use TF32 tensor cores (the fp32 islands, "
                        "--use_fp16 false); false = full fp32")
    p.add_argument("--augmentation", default="pil", choices=["pil", "batched"],
                   help="pil: the original per-image multi-crop transform (the original's crops, bit for bit); "
                        "batched: the same transforms applied to whole batches of tensors on the device "
                        "(ssvit.data.batched_multicrop; --method dino, datasets of one image size)")
    p.add_argument("--fused_adamw", default="auto", type=auto_bool,
                   help="AdamW's fused kernel: auto = on GPU only (CPU keeps PyTorch's per-parameter loop, the "
                        "original's numerics bit for bit); true = also on CPU (far fewer ops per step for small "
                        "models; equal within float rounding); false = never")
    p.add_argument("--retain_host_memory", default=True, type=bool_flag,
                   help="CPU runs: glibc malloc keeps freed memory for the next iteration instead of unmapping "
                        "large blocks (fewer page faults; numerics unchanged); false = glibc's defaults")
    p.add_argument("--compile", default=False, type=bool_flag,
                   help="torch.compile (Inductor) the student's and teacher's sub-networks; equal to eager within "
                        "float tolerance; compiled kernels are cached on disk (--compile_cache_dir)")
    p.add_argument("--compile_cache_dir", default=None, type=str,
                   help="Inductor's cache folder for --compile (default: $TORCHINDUCTOR_CACHE_DIR, else "
                        "~/.cache/ssvit/inductor)")
    p.add_argument("--val_freq", default=1, type=int,
                   help="run the method's validation (if it has one) every N epochs and at the last; the best "
                        "epoch is also saved as checkpoint_best.pth")
    p.add_argument("--max_bad_steps", default=3, type=int,
                   help="a non-finite loss or gradient skips the update; stop after this many in a row "
                        "(the last good checkpoint is kept)")
    p.add_argument("--dist_backend", default="auto", choices=["auto", "nccl", "gloo"],
                   help="process group backend: auto = NCCL on GPU, Gloo on CPU; gloo on GPU lets several ranks "
                        "share one GPU (tests)")
    p.add_argument("--dist_timeout", default=DEFAULT_TIMEOUT_MINUTES, type=float,
                   help="minutes a collective may wait for the other ranks before the job fails (also the rendezvous); torch's own defaults are 10 (NCCL) and 30 (Gloo)")
    p.add_argument("--save_every_iters", default=0, type=int,
                   help="also write checkpoint.pth every N iterations (exact mid-epoch resume); 0 = off")
    p.add_argument("--save_every_minutes", default=10.0, type=float,
                   help="also write checkpoint.pth when this many minutes passed since the last one; 0 = off")
    p.add_argument("--on_bad_image", default="skip", choices=["skip", "fail"],
                   help="unreadable image: skip it (counted, warned) or fail")
    p.add_argument("--print_freq", default=10, type=int)
    p.add_argument("--tensorboard", default=True, type=bool_flag, help="write TensorBoard events to output_dir/tb")
    p.add_argument("--accum_iter", default=1, type=int,
                   help="gradient accumulation: one optimizer step every N iterations (SERE's flag); lr scales "
                        "with batch x accum_iter x world size")
    p.add_argument("--max_iters", default=0, type=int,
                   help="stop after this many iterations in this invocation (benchmarks, smoke runs); 0 = off")


def build_pretrain_parser() -> argparse.ArgumentParser:
    """The engine's flags; the entry point adds the method's (``TrainingTask.add_args``)."""
    parser = argparse.ArgumentParser("ssvit pretraining", add_help=True)
    add_engine_args(parser)
    add_ssvit_args(parser)
    return parser


def _known_dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


#: the top-level key of a recipe file that describes it (source, the paper's GPUs, reported results)
RECIPE_KEY = "recipe"


def read_yaml_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The mapping in a ``--config`` file; a missing file, invalid YAML or a non-mapping is a
    one-line ``parser.error`` (exit 2)."""
    if not os.path.isfile(path):
        parser.error(f"--config file '{path}' does not exist")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        parser.error(f"--config file '{path}' is not valid YAML{at}: {getattr(e, 'problem', None) or e}")
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"cannot read --config file '{path}': {e}")
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        parser.error(f"--config file '{path}' must hold a mapping of flag: value, got a {type(cfg).__name__}")
    return cfg


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` with defaults taken from ``--config`` (if given). Unknown YAML keys are an error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        cfg = read_yaml_config(known.config, parser)
        cfg.pop(RECIPE_KEY, None)  # a recipe's description (``ssvit recipes``), not flags
        unknown = sorted(set(cfg) - _known_dests(parser))
        if unknown:
            parser.error(f"unknown keys in '{known.config}': {', '.join(unknown)}")
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    if known.config:  # argparse converts and checks command-line values only: do it for the file's too
        for action in parser._actions:
            if action.dest not in cfg or getattr(args, action.dest) is not cfg[action.dest]:
                continue  # not from the file, or overridden on the command line
            value = cfg[action.dest]
            if action.type is auto_bool and value is not None:
                try:
                    value = auto_bool(value)
                except argparse.ArgumentTypeError as e:
                    parser.error(f"'{action.dest}' in '{known.config}': {e}")
                setattr(args, action.dest, value)
            if action.choices is not None and value not in action.choices:
                parser.error(f"'{action.dest}' in '{known.config}': invalid choice {value!r} "
                             f"(choose from {', '.join(map(str, action.choices))})")
    return args


def save_config(args: argparse.Namespace, path: str) -> None:
    from .utils.checkpoint import save_text_atomic
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items())}
    save_text_atomic(yaml.safe_dump(data, sort_keys=True), path)
