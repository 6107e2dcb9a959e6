"""``ssvit recipes``: the originals' published recipes as config files, one line each.

A recipe is a YAML file under ``configs/`` (grouped by method) holding the flags of one paper row or
README command plus a ``recipe:`` mapping that describes it (``ssvit.config`` ignores that key when the
file is given to ``--config``)::

    recipe:
      paper: DINO ViT-S/16, 100 epochs ("vanilla")      # the row it reproduces
      source: facebookresearch/dino README.md, "Vanilla DINO training"
      command: pretrain          # the ssvit command that runs it: pretrain, finetune, linear, knn, propagate
      gpus: 8                    # the original's GPU count (nodes x GPUs per node)
      reported: {knn: 69.3, linear: 74.0}                 # top-1 % the source reports (null: none given)

    ssvit recipes                 # the table: name, method, backbone, epochs, GPUs x batch = total, reported
    ssvit recipes dino/vit_small_16_100ep   # the file's header and the command line that runs it

The total batch is computed from the parsed flags (``gpus x batch_size_per_gpu x accum_iter``), so the
table cannot disagree with what the file runs. On fewer GPUs than the original, ``--accum_iter`` keeps
the total batch (and so the linearly scaled learning rate) of the recipe.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple, Optional

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
CONFIGS = os.path.join(ROOT, "configs")
#: ssvit command -> the root script that runs it under torchrun
SCRIPTS = {"pretrain": "main_pretrain.py", "finetune": "main_finetune.py", "linear": "eval_linear.py",
           "knn": "eval_knn.py", "propagate": "-m ssvit propagate"}
RESULT_NAMES = {"knn": "k-NN", "linear": "linear", "finetune": "finetune", "j_and_f": "J&F", "miou": "mIoU",
                "top1": "top-1"}


class RecipeError(ValueError):
    """A recipe file that does not describe itself or does not parse (a one-line error, exit 2)."""


class Recipe(NamedTuple):
    name: str                  # path under configs/ without .yaml
    path: str
    paper: str
    source: str
    command: str
    method: str
    backbone: str
    epochs: Optional[int]
    gpus: int
    batch_per_gpu: Optional[int]
    total_batch: Optional[int]
    reported: dict
    args: argparse.Namespace


def recipe_paths(root: str = CONFIGS) -> list[str]:
    """Every YAML file under ``root`` with a top-level ``recipe:`` mapping, sorted."""
    out = []
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith((".yaml", ".yml")):
                path = os.path.join(folder, f)
                try:
                    with open(path) as fh:
                        cfg = yaml.safe_load(fh)
                except yaml.YAMLError as e:  # a broken file under configs/ is an error, not a missing recipe
                    raise RecipeError(f"{path} is not valid YAML: {getattr(e, 'problem', None) or e}") from None
                if isinstance(cfg, dict) and isinstance(cfg.get("recipe"), dict):
                    out.append(path)
    return sorted(out)


def parse_recipe_args(command: str, path: str, extra: Optional[list] = None) -> argparse.Namespace:
    """The flags ``ssvit <command> --config path`` would run with (``extra`` appended)."""
    from ssvit.cli.arguments import PARSED_COMMANDS, parse_command_args
    if command not in PARSED_COMMANDS:
        raise RecipeError(f"{path}: recipe.command must be one of {', '.join(SCRIPTS)}, got {command!r}")
    return parse_command_args(command, ["--config", path, *(extra or [])])


def backbone_name(args: argparse.Namespace) -> str:
    if getattr(args, "model_size", None) and getattr(args, "backbone", None):  # RelViT's --backbone / --model_size
        return f"{args.backbone}_{args.model_size}/{args.patch_size}"
    arch = getattr(args, "arch", "?")
    patch = getattr(args, "patch_size", None)
    if arch.startswith(("vit", "deit", "sit")) and patch:
        return f"{arch}/{patch}"
    return arch


def load_recipe(path: str, root: str = CONFIGS) -> Recipe:
    with open(path) as f:
        meta = (yaml.safe_load(f) or {}).get("recipe")
    if not isinstance(meta, dict):
        raise RecipeError(f"{path}: no 'recipe:' mapping")
    missing = [k for k in ("paper", "source", "command", "gpus") if k not in meta]
    if missing:
        raise RecipeError(f"{path}: recipe lacks {', '.join(missing)}")
    command, gpus = meta["command"], int(meta["gpus"])
    try:
        args = parse_recipe_args(command, path)
    except SystemExit as e:  # argparse's error (already printed)
        raise RecipeError(f"{path}: its flags do not parse for 'ssvit {command}' (exit {e.code})") from None
    batch = getattr(args, "batch_size_per_gpu", None)
    total = None
    if command in ("pretrain", "finetune", "linear") and batch:
        total = gpus * int(batch) * int(getattr(args, "accum_iter", 1) or 1)
    name = os.path.splitext(os.path.relpath(path, root))[0]
    method = getattr(args, "method", None) or {"linear": "linear probe", "knn": "k-NN",
                                                  "propagate": "propagation"}.get(command, command)
    return Recipe(name, path, str(meta["paper"]), str(meta["source"]), command, method, backbone_name(args),
                  getattr(args, "epochs", None), gpus, batch, total, dict(meta.get("reported") or {}), args)


def format_reported(reported: dict) -> str:
    parts = [f"{RESULT_NAMES.get(k, k)} {v}" for k, v in reported.items() if v is not None]
    return ", ".join(parts) if parts else "-"


def table(recipes: list[Recipe]) -> str:
    rows = [("name", "method", "backbone", "epochs", "GPUs x batch = total", "reported (%)")]
    for r in recipes:
        batch = f"{r.gpus} x {r.batch_per_gpu} = {r.total_batch}" if r.total_batch else f"{r.gpus} GPU(s)"
        rows.append((r.name, r.method, r.backbone, "-" if r.epochs is None or r.command == "knn" else str(r.epochs),
                     batch, format_reported(r.reported)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def how_to_run(r: Recipe) -> str:
    rel = os.path.relpath(r.path, ROOT)
    data = "--data_path /path/to/data --output_dir /path/to/output"
    if r.command == "knn" or r.command == "linear" or r.command == "propagate":
        data = "--data_path /path/to/data --pretrained_weights /path/to/checkpoint.pth"
        if r.command != "knn":
            data += " --output_dir /path/to/output"
    script = SCRIPTS[r.command]
    lines = []
    if r.gpus <= 8:
        lines.append(f"torchrun --nproc_per_node {r.gpus} {script} --config {rel} {data}")
    else:
        nodes = -(-r.gpus // 8)
        lines.append(f"ssvit submit --nodes {nodes} --ngpus {r.gpus // nodes} --partition PARTITION "
                     f"--config {rel} {data}")
    if r.command in ("pretrain", "finetune") and r.total_batch:
        lines.append(f"# on G < {r.gpus} GPUs keep the total batch {r.total_batch}: add --accum_iter {r.gpus}/G")
    return "\n".join(lines)


def describe(r: Recipe) -> str:
    with open(r.path) as f:
        header = [line.rstrip() for line in f if line.startswith("#")]
    lines = [f"{r.name}: {r.paper}", f"source: {r.source}",
             f"method {r.method}, backbone {r.backbone}, epochs {r.epochs}, "
             + (f"{r.gpus} GPUs x {r.batch_per_gpu} = {r.total_batch} images per step" if r.total_batch
                else f"{r.gpus} GPU(s)"),
             f"reported: {format_reported(r.reported)}", *header, "", "run:", how_to_run(r)]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("ssvit recipes", description="the originals' published recipes (configs/)")
    p.add_argument("name", nargs="?", default=None, help="a recipe's name: print its header and how to run it")
    p.add_argument("--method", default=None, help="only the recipes of this method")
    return p


def main(argv: Optional[list] = None) -> int:
    args = get_args_parser().parse_args(argv)
    recipes = [load_recipe(p) for p in recipe_paths()]
    if args.name:
        match = [r for r in recipes if r.name == args.name or r.name == args.name.removesuffix(".yaml")]
        if not match:
            raise RecipeError(f"no recipe '{args.name}'; known: {', '.join(r.name for r in recipes)}")
        print(describe(match[0]))
        return 0
    if args.method:
        recipes = [r for r in recipes if r.method == args.method]
    print(table(recipes))
    return 0


def cli(argv: Optional[list] = None) -> int:
    from ssvit.cli import exit_status
    return exit_status(lambda: main(argv), (RecipeError, OSError), "ssvit recipes")


if __name__ == "__main__":
    sys.exit(cli())
