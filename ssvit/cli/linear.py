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
* ``output_dir/log.txt`` (JSON line per epoch), ``output_dir/results.json``;
* ``--linear_protocol dino|ibot|esvit`` (default: ``esvit`` for Swin / CvT / ViL, else ``dino``): the
  feature of each original script (``ssvit/evaluation/linear.py``): DINO's interleaved avgpool,
  iBOT's ``--avgpool_patchtokens 0|1|2``, EsViT's ``forward_return_n_last_blocks`` for every
  backbone; EsViT's ``--cfg FILE KEY VALUE ...`` builds Swin / CvT / ViL from its YAML;
* ``--lr_sweep true``: iBOT's ``eval_linear_multi.py`` -- one classifier per (lr, wd, optimiser) of
  its grid (``--sweep_lr_only``, default true: 45 learning rates, SGD, no weight decay; false: x
  wd {0, 1e-6} x {sgd, lars}; ``--lrs`` replaces the learning rates), all trained on the same
  batches in one pass; the best one is reported; iBOT's ``checkpoint_{key}_linear.pth`` is written
  when the best accuracy improves (with ``--linear_protocol ibot`` also without the sweep);
* iBOT's ``--checkpoint_key a,b`` (one evaluation per key, in ``output_dir/<key>/`` when several) and
  ``--load_from FILE`` (resume from that file instead of ``output_dir/checkpoint.pth.tar``).

Examples:
    python eval_linear.py --arch vit_small --patch_size 16 --pretrained_weights dino_deitsmall16_pretrain.pth \\
        --data_path /data/imagenet --output_dir runs/linear
    python eval_linear.py --arch vit_shallow --patch_size 7 --n_last_blocks 1 --pretrained_weights runs/fashion_mnist_dino/checkpoint.pth \\
        --dataset fashion_mnist --num_labels 10 --epochs 10 --cache_features true --output_dir runs/fm_linear
    python eval_linear.py --arch swin_tiny --cfg experiments/imagenet/swin/swin_tiny_patch4_window7_224.yaml \
        --pretrained_weights checkpoint_best.pth --n_last_blocks 4 --data_path /data/imagenet MODEL.NUM_CLASSES 0
    python eval_linear.py --linear_protocol ibot --arch vit_base --n_last_blocks 1 --avgpool_patchtokens 2 \
        --lr_sweep true --pretrained_weights checkpoint_teacher.pth --data_path /data/imagenet
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ssvit.cli import exit_status
from ssvit.config import bool_flag, parse_with_config
from ssvit.data.datasets import DATASETS, DataError
from ssvit.utils.distributed import DEFAULT_TIMEOUT_MINUTES
from ssvit.engine.distributed import DeviceError, init_distributed
from ssvit.evaluation.linear import (PROTOCOLS, ClassifierBank, LinearClassifier, LinearFeatures, RawPixels,
                                     build_head_optimizer, cache_features, classifier_heads, default_protocol,
                                     feature_dim, parse_avgpool, sweep_grid, train_one_epoch, validate)
from ssvit.utils.checkpoint import (CheckpointError, load_checkpoint, load_state_checked, save_atomic,
                                    save_text_atomic, strip_prefixes)


class UsageError(RuntimeError):
    """A flag combination that cannot work (exit 2)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Evaluation with linear classification on ImageNet")
    p.add_argument("--config", default=None, type=str, help="YAML file of flag defaults (e.g. a recipe); flags override")
    p.add_argument("--n_last_blocks", default=4, type=int, help="""Concatenate [CLS] tokens
        for the `n` last blocks. We use `n=4` when evaluating ViT-Small and `n=1` with ViT-Base.""")
    p.add_argument("--avgpool_patchtokens", default=None, type=str,
                   help="Whether ot not to concatenate the global average pooled features to the [CLS] token "
                        "(DINO / EsViT: a boolean; --linear_protocol ibot: 0 CLS, 1 mean patch token, 2 both)")
    p.add_argument("--arch", default="vit_small", type=str, help="Architecture (raw_pixels: the pixel baseline)")
    p.add_argument("--patch_size", default=16, type=int, help="Patch resolution of the model.")
    p.add_argument("--pretrained_weights", default="", type=str, help="Path to pretrained weights to evaluate.")
    p.add_argument("--checkpoint_key", default="teacher", type=str,
                   help='Key to use in the checkpoint (example: "teacher"); iBOT: a comma-separated list')
    p.add_argument("--epochs", default=100, type=int, help="Number of epochs of training.")
    p.add_argument("--lr", default=0.001, type=float, help="""Learning rate at the beginning of
        training (highest LR used during training). The learning rate is linearly scaled
        with the batch size, and specified here for a reference batch size of 256.""")
    p.add_argument("--batch_size_per_gpu", default=128, type=int, help="Per-GPU batch-size")
    p.add_argument("--dist_url", default="env://", type=str, help="url used to set up distributed training")
    p.add_argument("--dist_timeout", default=DEFAULT_TIMEOUT_MINUTES, type=float,
                   help="minutes a collective may wait for the other ranks before the job fails (also the rendezvous); torch's own defaults are 10 (NCCL) and 30 (Gloo)")
    p.add_argument("--local_rank", "--local-rank", default=0, type=int, help="Please ignore and do not set this argument.")
    p.add_argument("--data_path", default="/path/to/imagenet/", type=str)
    p.add_argument("--num_workers", default=10, type=int, help="Number of data loading workers per GPU.")
    p.add_argument("--val_freq", default=1, type=int, help="Epoch frequency for validation.")
    p.add_argument("--output_dir", default=".", help="Path to save logs and checkpoints")
    p.add_argument("--num_labels", default=1000, type=int, help="Number of labels for linear classifier")
    p.add_argument("--evaluate", dest="evaluate", action="store_true", help="evaluate model on validation set")
    # iBOT (eval_linear.py / eval_linear_multi.py)
    p.add_argument("--linear_protocol", default="auto", choices=("auto",) + PROTOCOLS,
                   help="whose feature: dino (interleaved avgpool), ibot (avgpool 0/1/2), esvit (n last blocks of "
                        "every backbone); auto: esvit for Swin / CvT / ViL, else dino")
    p.add_argument("--lr_sweep", default=False, type=bool_flag,
                   help="iBOT's eval_linear_multi.py: train one classifier per (lr, wd, optimiser) of its grid")
    p.add_argument("--sweep_lr_only", default=True, type=bool_flag,
                   help="with --lr_sweep: only the 45 learning rates (SGD, wd 0); false adds wd 1e-6 and LARS")
    p.add_argument("--lrs", default=None, type=float, nargs="+",
                   help="with --lr_sweep: these learning rates (per 256 images) instead of iBOT's 45")
    p.add_argument("--load_from", default=None, type=str, help="resume from this checkpoint (iBOT)")
    p.add_argument("--window_size", default=None, type=int, help="window size of Swin models (iBOT)")
    # EsViT's model config of Swin / CvT / ViL
    p.add_argument("--cfg", default=None, type=str, help="EsViT YAML model config (Swin / CvT / ViL)")
    p.add_argument("--zip_mode", default=False, type=bool_flag, help="EsViT's packed ImageNet: not supported")
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
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of --cfg (EsViT)")
    return p


def build_datasets(args):
    """(train with DINO's linear augmentation, train with the evaluation transform, val), all yielding
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


def build_frozen_model(args, device) -> nn.Module:
    if args.arch == "raw_pixels":  # the baseline: a linear classifier on the normalised pixels
        from ssvit.evaluation.knn import knn_eval_sizes
        return RawPixels(3, knn_eval_sizes(args.dataset, args.eval_size)[1]).to(device)
    from ssvit.cli import knn as eval_knn
    try:
        return eval_knn.build_model(args, device)
    except eval_knn.UsageError as e:  # unknown arch, bad --cfg / --window_size
        raise UsageError(str(e)) from e


def run(args) -> dict:
    """One evaluation per ``--checkpoint_key`` entry (iBOT's comma list)."""
    keys = [k.strip() for k in str(args.checkpoint_key).split(",") if k.strip()] or ["teacher"]
    if len(keys) == 1:
        args.checkpoint_key = keys[0]
        return run_one(args)
    results, root = {}, args.output_dir
    for key in keys:
        print(f"==> checkpoint key '{key}'")
        sub = argparse.Namespace(**{**vars(args), "checkpoint_key": key, "output_dir": os.path.join(root, key)})
        results[key] = run_one(sub)
    return results


def check_args(args) -> None:
    if args.epochs < 1 or args.batch_size_per_gpu < 1 or args.num_labels < 1 or args.val_freq < 1:
        raise UsageError("--epochs, --batch_size_per_gpu, --num_labels and --val_freq must be >= 1")
    if args.pretrained_linear and not args.evaluate:
        raise UsageError("--pretrained_linear is read with --evaluate")
    if args.lr_sweep and args.evaluate:
        raise UsageError("--lr_sweep trains classifiers: it does not combine with --evaluate")
    if args.lrs is not None and not args.lr_sweep:
        raise UsageError("--lrs is the grid of --lr_sweep true")
    if args.lrs is not None and any(lr <= 0 for lr in args.lrs):
        raise UsageError("--lrs must all be > 0")
    if args.load_from and not os.path.isfile(args.load_from):
        raise UsageError(f"--load_from: '{args.load_from}' does not exist")


def run_one(args) -> dict:
    check_args(args)
    info = init_distributed(args.device, args.dist_url, args.dist_timeout)
    device = info.device
    torch.manual_seed(args.seed)
    model = build_frozen_model(args, device)
    protocol = default_protocol(model) if args.linear_protocol == "auto" else args.linear_protocol
    try:
        avgpool = parse_avgpool(args.avgpool_patchtokens if args.avgpool_patchtokens is not None else 0, protocol)
        features = LinearFeatures(model, protocol, args.n_last_blocks, avgpool)
    except ValueError as e:
        raise UsageError(str(e)) from e
    for p in model.parameters():
        p.requires_grad = False
    model.eval()
    from ssvit.evaluation.knn import knn_eval_sizes
    dim = feature_dim(model, args.n_last_blocks, avgpool, protocol, probe_size=knn_eval_sizes(args.dataset, args.eval_size)[1])
    print(f"Linear probe on the '{protocol}' feature: {dim} dims (n_last_blocks {args.n_last_blocks}, "
          f"avgpool_patchtokens {avgpool})")
    grid = sweep_grid(args.sweep_lr_only, args.lrs) if args.lr_sweep else [(args.lr, 0.0, "sgd")]
    classifier = ClassifierBank(dim, args.num_labels, len(grid)) if args.lr_sweep else LinearClassifier(dim, args.num_labels)
    classifier = classifier.to(device)
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
        stats = validate(features, classifier, val_loader, device)
        print(f"Accuracy of the network on the {len(val)} test images: {stats['acc1']:.1f}%")
        return stats

    os.makedirs(args.output_dir, exist_ok=True)
    cached = None
    if args.cache_features:
        print("Extracting the frozen features once (--cache_features true: no augmentation)")
        tr = cache_features(features, loader(train_plain, False), device)
        te = cache_features(features, val_loader, device)
        idx_tr, idx_te = torch.arange(len(tr[1])), torch.arange(len(te[1]))
        cached = (TensorDataset(tr[0], tr[1], idx_tr), TensorDataset(te[0], te[1], idx_te))
        val_loader = loader(cached[1], False)

    scale = (args.batch_size_per_gpu * info.world_size) / 256.
    heads = classifier_heads(classifier)
    optimizers = [build_head_optimizer(h.parameters(), o, lr * scale, wd) for h, (lr, wd, o) in zip(heads, grid)]
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=0) for opt in optimizers]
    ckpt_path = os.path.join(args.output_dir, "checkpoint.pth.tar")
    resume_path = args.load_from or ckpt_path
    start_epoch, best_acc, best_hidx, best_lr_only = 0, 0.0, 0, 0.0
    if os.path.isfile(resume_path):
        ck = load_checkpoint(resume_path)
        if args.lr_sweep and [tuple(g) for g in ck.get("grid", [])] != grid:
            raise CheckpointError(f"'{resume_path}' was written for another sweep grid: use a new --output_dir")
        load_state_checked(bare, strip_prefixes(ck["state_dict"], ("module.",)), "linear classifier")
        for obj, key in ((optimizers, "optimizer"), (schedulers, "scheduler")):
            states = ck[key + "s"] if args.lr_sweep else [ck[key]]
            for o, st in zip(obj, states):
                o.load_state_dict(st)
        start_epoch, best_acc = int(ck["epoch"]), float(ck["best_acc"])
        best_hidx = int(ck.get("best_acc_hidx", 0))
        best_lr_only = float(ck.get("best_acc_sweep_lr_only", 0.0))
        print(f"Resumed from {resume_path}: epoch {start_epoch}")
    feature_model = None if cached else features
    test_stats: dict = {}
    ibot_best = os.path.join(args.output_dir, f"checkpoint_{args.checkpoint_key}_linear.pth")
    for epoch in range(start_epoch, args.epochs):
        train_ds = cached[0] if cached else train_aug
        if not cached:
            train_aug.set_epoch(epoch)
        train_stats = train_one_epoch(feature_model, classifier, optimizers if args.lr_sweep else optimizers[0],
                                      loader(train_ds, True, epoch), device, args.print_freq,
                                      header=f"Epoch: [{epoch}]")
        for sch in schedulers:
            sch.step()
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch}
        improved = False
        if epoch % args.val_freq == 0 or epoch == args.epochs - 1:
            test_stats = validate(feature_model, classifier, val_loader, device)
            if args.lr_sweep:
                accs = [test_stats[f"acc{g}@1"] for g in range(len(grid))]
                hidx = max(range(len(grid)), key=accs.__getitem__)
                acc = accs[hidx]
            else:
                hidx, acc = 0, test_stats["acc1"]
            print(f"Accuracy at epoch {epoch} of the network on the {len(val)} test images: {acc:.1f}%")
            improved = acc >= best_acc
            if improved:
                best_acc, best_hidx = acc, hidx
            print(f"Max accuracy so far: {best_acc:.2f}%")
            if args.lr_sweep:
                best_lr_only = max(best_lr_only, _best_sgd_wd0(test_stats, grid))
                lr, wd, o = grid[best_hidx]
                print(f"Best: lr {lr:g}, wd {wd:g}, optim {o} (classifier {best_hidx} of {len(grid)})")
            log_stats.update({f"test_{k}": v for k, v in test_stats.items()})
        if info.is_main:
            with open(os.path.join(args.output_dir, "log.txt"), "a") as f:
                f.write(json.dumps(log_stats) + "\n")
            state_dict = classifier.state_dict() if info.distributed else \
                {f"module.{k}": v for k, v in classifier.state_dict().items()}  # DINO's DDP layout
            ck = {"epoch": epoch + 1, "state_dict": state_dict, "best_acc": best_acc}
            if args.lr_sweep:
                ck.update(optimizers=[o.state_dict() for o in optimizers],
                          schedulers=[s.state_dict() for s in schedulers], best_acc_hidx=best_hidx,
                          best_acc_sweep_lr_only=best_lr_only, grid=grid)
            else:
                ck.update(optimizer=optimizers[0].state_dict(), scheduler=schedulers[0].state_dict())
            save_atomic(ck, ckpt_path)
            if improved and (args.lr_sweep or protocol == "ibot"):
                save_atomic(ck, ibot_best)  # iBOT writes its checkpoint when the accuracy improves
    print("Training of the supervised linear classifier on frozen features completed.\n"
          f"Top-1 test accuracy: {best_acc:.1f}")
    results = {"best_acc1": best_acc, "last": test_stats, "epochs": args.epochs, "cache_features": args.cache_features,
               "linear_protocol": protocol, "n_last_blocks": args.n_last_blocks, "avgpool_patchtokens": avgpool,
               "feature_dim": dim, "pretrained_weights": args.pretrained_weights,
               "checkpoint_key": args.checkpoint_key, "test_images": len(val)}
    if args.lr_sweep:
        lr, wd, o = grid[best_hidx]
        results.update(best_lr=lr, best_wd=wd, best_optim=o, best_acc_hidx=best_hidx, grid_size=len(grid))
    if info.is_main:
        save_text_atomic(json.dumps(results, indent=2), os.path.join(args.output_dir, "results.json"))
    return results


def _best_sgd_wd0(stats: dict, grid: list) -> float:
    """iBOT's ``best_acc_sweep_lr_only``: the best top-1 among the SGD, wd-0 classifiers (last validation)."""
    accs = [stats.get(f"acc{g}@1", 0.0) for g, (_, wd, o) in enumerate(grid) if wd == 0 and o == "sgd"]
    return max(accs, default=0.0)


def main(argv: Optional[list] = None) -> dict:
    args = parse_with_config(get_args_parser(), argv)
    return run(args)


def cli(argv: Optional[list] = None) -> int:
    return exit_status(lambda: main(argv), (CheckpointError, DataError, UsageError, DeviceError, OSError),
                       "eval_linear.py")
