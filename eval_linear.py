#!/usr/bin/env python
"""Linear probing on frozen features, as facebookresearch/dino ``eval_linear.py`` (same flags,
defaults, model, optimisation, checkpoint and printed lines), plus:

* ``--dataset`` as eval_knn.py (``imagefolder``: ``data_path/train`` + ``data_path/val``; built-ins:
  their train / test splits) and ``--eval_size``;
* ``--evaluate --pretrained_linear FILE``: validate a saved head -- the released
  ``*_linearweights.pth`` layout (``{'state_dict': {'module.linear.weight', 'module.linear.bias'}}``)
  or this script's ``checkpoint.pth.tar`` -- loaded strictly (the original downloads the released
  head; ssvit never downloads);
* ``--cache_features true``: extract the frozen features once (train images with the validation
  transform: no augmentation) and train the head on them -- the same flags, much faster;
* ``output_dir/log.txt`` (JSON line per epoch), ``output_dir/results.json``.

Examples:
    python eval_linear.py --arch vit_small --patch_size 16 --pretrained_weights dino_deitsmall16_pretrain.pth \\
        --data_path /data/imagenet --output_dir runs/linear
    python eval_linear.py --arch vit_pico --patch_size 4 --pretrained_weights runs/fashion_mnist_dino/checkpoint.pth \\
        --dataset fashion_mnist --num_labels 10 --epochs 10 --cache_features true --output_dir runs/fm_linear
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ssvit.cli import exit_status
from ssvit.config import bool_flag
from ssvit.data.datasets import DATASETS, DataError
from ssvit.engine.distributed import DeviceError, init_distributed
from ssvit.evaluation.linear import (LinearClassifier, RawPixels, cache_features, check_feature_flags, feature_dim,
                                     train_one_epoch, validate)
from ssvit.utils.checkpoint import (CheckpointError, load_checkpoint, load_state_checked, save_atomic,
                                    save_text_atomic, strip_prefixes)


class UsageError(RuntimeError):
    """A flag combination that cannot work (exit 2)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Evaluation with linear classification on ImageNet")
    p.add_argument("--n_last_blocks", default=4, type=int, help="""Concatenate [CLS] tokens
        for the `n` last blocks. We use `n=4` when evaluating ViT-Small and `n=1` with ViT-Base.""")
    p.add_argument("--avgpool_patchtokens", default=False, type=bool_flag,
                   help="Whether ot not to concatenate the global average pooled features to the [CLS] token.")
    p.add_argument("--arch", default="vit_small", type=str, help="Architecture (raw_pixels: the pixel baseline)")
    p.add_argument("--patch_size", default=16, type=int, help="Patch resolution of the model.")
    p.add_argument("--pretrained_weights", default="", type=str, help="Path to pretrained weights to evaluate.")
    p.add_argument("--checkpoint_key", default="teacher", type=str, help='Key to use in the checkpoint (example: "teacher")')
    p.add_argument("--epochs", default=100, type=int, help="Number of epochs of training.")
    p.add_argument("--lr", default=0.001, type=float, help="""Learning rate at the beginning of
        training (highest LR used during training). The learning rate is linearly scaled
        with the batch size, and specified here for a reference batch size of 256.""")
    p.add_argument("--batch_size_per_gpu", default=128, type=int, help="Per-GPU batch-size")
    p.add_argument("--dist_url", default="env://", type=str, help="url used to set up distributed training")
    p.add_argument("--local_rank", "--local-rank", default=0, type=int, help="Please ignore and do not set this argument.")
    p.add_argument("--data_path", default="/path/to/imagenet/", type=str)
    p.add_argument("--num_workers", default=10, type=int, help="Number of data loading workers per GPU.")
    p.add_argument("--val_freq", default=1, type=int, help="Epoch frequency for validation.")
    p.add_argument("--output_dir", default=".", help="Path to save logs and checkpoints")
    p.add_argument("--num_labels", default=1000, type=int, help="Number of labels for linear classifier")
    p.add_argument("--evaluate", dest="evaluate", action="store_true", help="evaluate model on validation set")
    # ssvit additions
    p.add_argument("--pretrained_linear", default="", type=str,
                   help="with --evaluate: a saved linear head (released *_linearweights.pth layout or checkpoint.pth.tar)")
    p.add_argument("--cache_features", default=False, type=bool_flag,
                   help="extract the frozen features once (no augmentation) and train the head on them")
    p.add_argument("--dataset", default="imagefolder", type=str, choices=list(DATASETS))
    p.add_argument("--download", default=False, type=bool_flag, help="let torchvision download the dataset")
    p.add_argument("--eval_size", default=None, type=int,
                   help="crop size; default 224 (resize 256) for imagefolder, the native size for built-ins")
    p.add_argument("--synthetic_size", default=256, type=int, help="training images of --dataset synthetic")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--print_freq", default=20, type=int)
    p.add_argument("--seed", default=0, type=int)
    return p


def build_datasets(args):
    """(train with DINO's linear augmentation, val with the evaluation transform), both yielding
    ``(image, label, index)``."""
    from torchvision import transforms

    from ssvit.data.datasets import TransformedDataset
    from ssvit.data.transforms import normalize_transform
    from ssvit.evaluation.knn import build_knn_datasets, knn_eval_sizes
    train_eval, val = build_knn_datasets(args)
    _, crop = knn_eval_sizes(args.dataset, args.eval_size)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip(),
                                   normalize_transform()])
    return TransformedDataset(train_eval.base, train_tf, seed=args.seed, with_index=True), train_eval, val


def load_linear_head(classifier: nn.Module, path: str) -> None:
    """A saved head, strictly: ``{'state_dict': {'module.linear.weight', 'module.linear.bias'}}`` (the
    released files and this script's checkpoint.pth.tar) or a bare ``linear.*`` state dict."""
    ckpt = load_checkpoint(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"'{path}' holds no linear-head state dict ('state_dict' of module.linear.*)")
    load_state_checked(classifier, strip_prefixes(sd, ("module.",)), "linear classifier")
    print(f"Linear head loaded from {path}")


def run(args) -> dict:
    if args.epochs < 1 or args.batch_size_per_gpu < 1 or args.num_labels < 1 or args.val_freq < 1:
        raise UsageError("--epochs, --batch_size_per_gpu, --num_labels and --val_freq must be >= 1")
    if args.pretrained_linear and not args.evaluate:
        raise UsageError("--pretrained_linear is read with --evaluate")
    info = init_distributed(args.device, args.dist_url)
    device = info.device
    torch.manual_seed(args.seed)
    if args.arch == "raw_pixels":  # the baseline: a linear classifier on the normalised pixels
        from ssvit.evaluation.knn import knn_eval_sizes
        model = RawPixels(3, knn_eval_sizes(args.dataset, args.eval_size)[1]).to(device)
    else:
        from eval_knn import build_model
        model = build_model(args, device)
    try:
        check_feature_flags(model, args.n_last_blocks, args.avgpool_patchtokens)
    except ValueError as e:
        raise UsageError(str(e)) from e
    for p in model.parameters():
        p.requires_grad = False
    model.eval()
    dim = feature_dim(model, args.n_last_blocks, args.avgpool_patchtokens)
    classifier = LinearClassifier(dim, num_labels=args.num_labels).to(device)
    if info.distributed:
        classifier = nn.parallel.DistributedDataParallel(
            classifier, device_ids=[device.index] if device.type == "cuda" else None)
    bare = classifier.module if info.distributed else classifier
    train_aug, train_plain, val = build_datasets(args)
    targets = set(int(t) for t in train_plain.targets)
    if max(targets) >= args.num_labels:
        raise UsageError(f"the dataset has labels up to {max(targets)}: --num_labels must be at least {max(targets) + 1}")

    def loader(ds, shuffle: bool, seed_epoch: int = 0):
        sampler = DistributedSampler(ds, shuffle=shuffle, seed=args.seed) if info.distributed else None
        if sampler is not None:
            sampler.set_epoch(seed_epoch)
        g = torch.Generator().manual_seed(args.seed + seed_epoch)
        return DataLoader(ds, sampler=sampler, shuffle=shuffle and sampler is None, generator=g,
                          batch_size=args.batch_size_per_gpu, num_workers=args.num_workers,
                          pin_memory=device.type == "cuda", drop_last=False)

    val_loader = loader(val, False)
    if args.evaluate:
        if not args.pretrained_linear:
            raise UsageError("--evaluate needs --pretrained_linear FILE (ssvit does not download the released heads)")
        load_linear_head(bare, args.pretrained_linear)
        stats = validate(model, classifier, val_loader, device, args.n_last_blocks, args.avgpool_patchtokens)
        print(f"Accuracy of the network on the {len(val)} test images: {stats['acc1']:.1f}%")
        return stats

    os.makedirs(args.output_dir, exist_ok=True)
    cached = None
    if args.cache_features:
        print("Extracting the frozen features once (--cache_features true: no augmentation)")
        tr = cache_features(model, loader(train_plain, False), device, args.n_last_blocks, args.avgpool_patchtokens)
        te = cache_features(model, val_loader, device, args.n_last_blocks, args.avgpool_patchtokens)
        idx_tr, idx_te = torch.arange(len(tr[1])), torch.arange(len(te[1]))
        cached = (TensorDataset(tr[0], tr[1], idx_tr), TensorDataset(te[0], te[1], idx_te))
        val_loader = loader(cached[1], False)

    optimizer = torch.optim.SGD(classifier.parameters(), args.lr * (args.batch_size_per_gpu * info.world_size) / 256.,
                                momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=0)
    ckpt_path = os.path.join(args.output_dir, "checkpoint.pth.tar")
    start_epoch, best_acc = 0, 0.0
    if os.path.isfile(ckpt_path):
        ck = load_checkpoint(ckpt_path)
        load_state_checked(bare, strip_prefixes(ck["state_dict"], ("module.",)), "linear classifier")
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        start_epoch, best_acc = int(ck["epoch"]), float(ck["best_acc"])
        print(f"Resumed from {ckpt_path}: epoch {start_epoch}")
    feature_model = None if cached else model
    test_stats: dict = {}
    for epoch in range(start_epoch, args.epochs):
        train_ds = cached[0] if cached else train_aug
        if not cached:
            train_aug.set_epoch(epoch)
        train_stats = train_one_epoch(feature_model, classifier, optimizer, loader(train_ds, True, epoch), device,
                                      args.n_last_blocks, args.avgpool_patchtokens, args.print_freq,
                                      header=f"Epoch: [{epoch}]")
        scheduler.step()
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch}
        if epoch % args.val_freq == 0 or epoch == args.epochs - 1:
            test_stats = validate(feature_model, classifier, val_loader, device, args.n_last_blocks,
                                  args.avgpool_patchtokens)
            print(f"Accuracy at epoch {epoch} of the network on the {len(val)} test images: {test_stats['acc1']:.1f}%")
            best_acc = max(best_acc, test_stats["acc1"])
            print(f"Max accuracy so far: {best_acc:.2f}%")
            log_stats.update({f"test_{k}": v for k, v in test_stats.items()})
        if info.is_main:
            with open(os.path.join(args.output_dir, "log.txt"), "a") as f:
                f.write(json.dumps(log_stats) + "\n")
            state_dict = classifier.state_dict() if info.distributed else \
                {f"module.{k}": v for k, v in classifier.state_dict().items()}  # DINO's DDP layout
            save_atomic({"epoch": epoch + 1, "state_dict": state_dict, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "best_acc": best_acc}, ckpt_path)
    print("Training of the supervised linear classifier on frozen features completed.\n"
          f"Top-1 test accuracy: {best_acc:.1f}")
    results = {"best_acc1": best_acc, "last": test_stats, "epochs": args.epochs, "cache_features": args.cache_features,
               "n_last_blocks": args.n_last_blocks, "avgpool_patchtokens": args.avgpool_patchtokens,
               "pretrained_weights": args.pretrained_weights, "test_images": len(val)}
    if info.is_main:
        save_text_atomic(json.dumps(results, indent=2), os.path.join(args.output_dir, "results.json"))
    return results


def main(argv: Optional[list] = None) -> dict:
    args = get_args_parser().parse_args(argv)
    args.cfg, args.opts, args.zip_mode = None, [], False  # eval_knn.build_model's EsViT fields
    return run(args)


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, DataError, UsageError, DeviceError, OSError),
                       "eval_linear.py")


if __name__ == "__main__":
    sys.exit(cli())
