"""SiT-v1's "SSL losses as metrics" of a checkpoint, without training (the seed README's
``cow_ssl_eval.py``, which exists in no public commit): rotation cross entropy and top-1,
contrastive NT-Xent, L1 reconstruction and the weighted total on the held-out split, with a fixed
rotation / corruption seed (two runs agree exactly), plus a reconstruction picture.

    ssvit ssl-losses --pretrained_weights runs/sit/checkpoint.pth --arch sit_pico \\
        --patch_size 4 --input-size 28 --data-set fashion_mnist --output_dir runs/sit_eval

Reads ssvit ``--method sit`` checkpoints (``student``) and the original's (``model``). Writes
``output_dir/ssl_losses.json`` and ``output_dir/reconstruction.png``; prints the original's
``* Acc@1 X Acc@5 Y loss Z`` line and a JSON line of every metric.
"""
from __future__ import annotations

import argparse
import json
import os


import torch
from torch.utils.data import DataLoader

from ssvit.cli import exit_status
from ssvit.config import bool_flag
from ssvit.data import DataError, build_dataset, split_root
from ssvit.data.datasets import TransformedDataset
from ssvit.objectives.sit_eval import evaluate_sit_losses
from ssvit.methods.sit import SiTViews, _sit_dataset, build_sit_transform
from ssvit.models import create_backbone
from ssvit.utils.checkpoint import CheckpointError, load_checkpoint, load_state_checked, strip_prefixes


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SiT-v1 SSL losses as metrics")
    p.add_argument("--pretrained_weights", required=True, help="a --method sit checkpoint or the original's")
    p.add_argument("--checkpoint_key", default="student", help="network of an ssvit checkpoint")
    p.add_argument("--arch", "--model", dest="arch", default="sit_base")
    p.add_argument("--patch_size", default=16, type=int)
    p.add_argument("--input-size", "--input_size", dest="input_size", default=224, type=int)
    p.add_argument("--representation-size", dest="representation_size", default=None, type=int)
    p.add_argument("--data-set", "--dataset", dest="dataset", default="cifar10", type=_sit_dataset)
    p.add_argument("--data_path", "--dataset_location", dest="data_path", default="downloaded_datasets")
    p.add_argument("--download", default=False, type=bool_flag)
    p.add_argument("--synthetic_size", default=256, type=int)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", default=108, type=int)
    p.add_argument("--num_workers", default=4, type=int)
    p.add_argument("--seed", default=0, type=int, help="rotation and corruption seed")
    p.add_argument("--output_dir", default=".")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model = create_backbone(args.arch, patch_size=args.patch_size, img_size=args.input_size, training_mode="SSL",
                            representation_size=args.representation_size)
    ck = load_checkpoint(args.pretrained_weights)
    sd = ck.get(args.checkpoint_key) if isinstance(ck, dict) and isinstance(ck.get(args.checkpoint_key), dict) \
        else ck.get("model") if isinstance(ck, dict) and isinstance(ck.get("model"), dict) else ck
    load_state_checked(model, strip_prefixes(sd, ("module.",)), f"SiT model '{args.arch}'")
    base = build_dataset(args.dataset, split_root(args.dataset, args.data_path, "val"), train=False,
                         download=args.download, synthetic_size=args.synthetic_size)
    ds = TransformedDataset(base, SiTViews(build_sit_transform(args.input_size, False)), seed=args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    os.makedirs(args.output_dir, exist_ok=True)
    stats = evaluate_sit_losses(model.to(device), loader, device, seed=args.seed,
                                picture_path=os.path.join(args.output_dir, "reconstruction.png"))
    stats["images"] = len(ds)
    print(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}")
    print(json.dumps(stats))
    with open(os.path.join(args.output_dir, "ssl_losses.json"), "w") as f:
        json.dump(stats, f, indent=2)
    return stats


def cli(argv=None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, DataError, ValueError, OSError), "eval_ssl_losses.py")
