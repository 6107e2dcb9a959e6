"""RelViT's seed scripts (guglielmocamporese/relvit ``scripts/upstream.sh``, ``downstream.sh``,
``downstream-only.sh``, ``upstream_MEGApatch.sh``): their flags and defaults, then ``ssvit pretrain
--method relvit``. ``scripts/<name>.sh`` runs ``ssvit relvit-script <name>``.

Unknown flags are refused as the originals do ("X argument not allowed", exit 1); ``--num_gpus N > 1``
runs under torchrun. Differences: ``downstream.sh`` honours ``--drop_path_rate`` (the seed passes it
through a misspelt variable, so it is always empty); ssvit's ``--download --tensorboard --max_iters
--device --synthetic_size`` pass through.
"""
from __future__ import annotations

import subprocess
import sys
from typing import Optional

#: script -> (output sub-folder, task flags, default --patch_trans)
SCRIPTS = {
    "upstream": ("upstream", ["--task", "upstream", "--use_relations", "--use_abs_positions"], None),
    "downstream": ("downstream", ["--task", "downstream", "--use_positional_embeddings", "--use_supervision",
                                  "--use_clf_token"], None),
    "downstream-only": ("downstream-only", ["--task", "downstream", "--use_positional_embeddings", "--use_supervision",
                                            "--use_clf_token", "--use_relations", "--use_abs_positions"], "None"),
    "upstream_MEGApatch": ("upstream_megapatch", ["--task", "upstream", "--use_relations", "--use_abs_positions",
                                                  "--mega_patches"], None),
}
DEFAULTS = {"mode": "train", "backbone": "vit", "model_checkpoint": "", "patch_size": "-1", "batch_size": "256",
            "model_size": "small", "exp_id": "", "optimizer": "adamw", "lr": "5e-4", "epochs": "100", "num_gpus": "1",
            "proj_dropout": "0", "drop_path_rate": "0.0", "dropout": "0.1", "weight_decay": "0.0", "num_workers": "8",
            "data_base_path": "./datasets/data", "patch_trans": "colJitter:0.8-grayScale:0.2", "seed": "35771",
            "side_megapatches": "5", "labels_path": "", "dataset": "", "output_dir": ""}
PASSTHROUGH = ("--download", "--tensorboard", "--max_iters", "--device", "--synthetic_size")


def pretrain_argv(script: str, argv: list) -> tuple[list, int]:
    """(``ssvit pretrain`` flags, number of GPUs) of the seed script ``script`` called with ``argv``;
    ``SystemExit`` with the seed's message and status on a bad flag."""
    out_name, task_flags, patch_trans = SCRIPTS[script]
    v = dict(DEFAULTS)
    if patch_trans is not None:
        v["patch_trans"] = patch_trans
    extra = []
    it = iter(argv)
    for flag in it:
        value = next(it, "")
        if flag in PASSTHROUGH:
            extra += [flag, value]
        elif flag.startswith("--") and flag[2:] in v:
            v[flag[2:]] = value
        else:
            print(f"{flag} argument not allowed")
            raise SystemExit(1)
    if not v["dataset"]:
        print("--dataset is required")
        raise SystemExit(2)
    out = v["output_dir"] or f"tmp/{v['dataset']}/{out_name}" + (f"-{v['exp_id']}" if v["exp_id"] else "")
    flags = ["--method", "relvit", "--seed", v["seed"], "--mode", v["mode"], "--grad_clip_val", "1.0",
             "--exp_id", v["exp_id"], "--backbone", v["backbone"], "--model_size", v["model_size"],
             "--num_gpus", v["num_gpus"], "--epochs", v["epochs"], "--dataset", v["dataset"],
             "--data_base_path", v["data_base_path"], "--batch_size", v["batch_size"],
             "--num_workers", v["num_workers"], "--weight_decay", v["weight_decay"], "--optimizer", v["optimizer"],
             "--lr", v["lr"], "--drop_path_rate", v["drop_path_rate"], "--proj_dropout", v["proj_dropout"],
             "--model_checkpoint", v["model_checkpoint"], "--patch_size", v["patch_size"], "--dropout", v["dropout"],
             "--attn_mask", "", "--patch_trans", v["patch_trans"], "--labels_path", v["labels_path"],
             "--side_megapatches", v["side_megapatches"], "--output_dir", out, *task_flags, *extra]
    return flags, int(v["num_gpus"])


def cli(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SCRIPTS:
        print(f"usage: ssvit relvit-script {{{','.join(SCRIPTS)}}} [the seed script's flags]", file=sys.stderr)
        return 2
    flags, gpus = pretrain_argv(argv[0], argv[1:])
    if gpus > 1:
        return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus),
                                "-m", "ssvit", "pretrain", *flags])
    from ssvit.cli import pretrain
    return pretrain.main(flags)
