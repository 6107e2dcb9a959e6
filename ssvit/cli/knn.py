"""Weighted k-NN classification of frozen backbone features (facebookresearch/dino ``eval_knn.py``).

    python eval_knn.py --arch vit_small --patch_size 16 --pretrained_weights ckpt.pth \
        --data_path /path/to/imagenet/                       # ImageFolder train/ and val/
    python eval_knn.py --arch vit_pico --patch_size 4 --pretrained_weights ckpt.pth \
        --dataset cifar10 --data_path ./data --nb_knn 10 20  # a built-in dataset, native size
    torchrun --nproc_per_node 2 eval_knn.py ...              # distributed feature extraction

Flags and defaults are the original's (spec evaluation.md §12.1) plus ``--dataset``, ``--download``,
``--eval_size`` and ``--synthetic_size``. Differences from the original: weights are never
downloaded (an empty ``--pretrained_weights`` is an error), iBOT-style ``{'state_dict': ...}``
files load with the default key, mismatching checkpoints fail listing the keys, ``--use_cuda``
falls back to the CPU without a GPU, and k larger than the training set is skipped with a warning.
Errors about the data or the weights exit with status 2 and a one-paragraph message.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from ssvit.cli import exit_status
from ssvit.config import bool_flag, parse_with_config
from ssvit.data.datasets import DATASETS, DataError
from ssvit.utils.checkpoint import CheckpointError, save_atomic
from ssvit.utils.distributed import DEFAULT_TIMEOUT_MINUTES
from ssvit.engine.distributed import DeviceError, init_distributed
from ssvit.utils.shutdown import finish
from ssvit.evaluation.knn import build_eval_backbone, build_knn_datasets, extract_features, knn_classifier

FEATURE_FILES = ("trainfeat.pth", "testfeat.pth", "trainlabels.pth", "testlabels.pth")


class UsageError(RuntimeError):
    """A flag combination that cannot work (reported like data/checkpoint errors, exit 2)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Evaluation with weighted k-NN on ImageNet", add_help=True)
    p.add_argument("--batch_size_per_gpu", default=128, type=int, help="Per-GPU batch-size")
    p.add_argument("--config", default=None, type=str, help="YAML file of flag defaults (e.g. a recipe); flags override")
    p.add_argument("--nb_knn", default=[10, 20, 100, 200], nargs="+", type=int,
                   help="Number of NN to use. 20 is usually working the best.")
    p.add_argument("--temperature", default=0.07, type=float, help="Temperature used in the voting coefficient")
    p.add_argument("--pretrained_weights", default="", type=str, help="Path to pretrained weights to evaluate.")
    p.add_argument("--use_cuda", default=True, type=bool_flag,
                   help="Store features and run k-NN on the GPU (falls back to the CPU without one)")
    p.add_argument("--arch", default="vit_small", type=str, help="Architecture")
    p.add_argument("--patch_size", default=16, type=int, help="Patch resolution of the model.")
    p.add_argument("--checkpoint_key", default="teacher", type=str,
                   help='Key to use in the checkpoint (example: "teacher")')
    p.add_argument("--dump_features", default=None,
                   help="Path where to save computed features, empty for no saving")
    p.add_argument("--load_features", default=None,
                   help="If the features have already been computed, where to find them.")
    p.add_argument("--num_workers", default=10, type=int, help="Number of data loading workers per GPU.")
    p.add_argument("--dist_url", default="env://", type=str,
                   help="url used to set up distributed training; see https://pytorch.org/docs/stable/distributed.html")
    p.add_argument("--dist_timeout", default=DEFAULT_TIMEOUT_MINUTES, type=float,
                   help="minutes a collective may wait for the other ranks before the job fails (also the rendezvous); torch's own defaults are 10 (NCCL) and 30 (Gloo)")
    p.add_argument("--local_rank", "--local-rank", default=0, type=int,
                   help="Please ignore and do not set this argument.")
    p.add_argument("--data_path", default="/path/to/imagenet/", type=str)
    # ssvit additions
    p.add_argument("--dataset", default="imagefolder", type=str, choices=list(DATASETS),
                   help="imagefolder: data_path/train + data_path/val; others: train/test splits")
    p.add_argument("--download", default=False, type=bool_flag, help="let torchvision download the dataset")
    p.add_argument("--eval_size", default=None, type=int,
                   help="crop size; default 224 (resize 256) for imagefolder, the native size for built-ins")
    p.add_argument("--synthetic_size", default=256, type=int, help="training images of --dataset synthetic")
    p.add_argument("--knn_dtype", default="fp32", choices=["fp32", "fp16", "bf16", "auto"],
                   help="precision of the similarity matmul (top-k and vote stay fp32); fp16 / bf16 are for "
                        "GPUs (half the bank's memory, tensor cores), auto = bf16 on a GPU with native bf16, "
                        "else fp32. fp32 is the original's numerics")
    p.add_argument("--knn_chunk_size", default=256, type=int,
                   help="test images per similarity block (the (chunk, N_train) matrix bounds the memory)")
    # iBOT's additions (evaluation/eval_knn.py): the feature of its linear protocol, Swin's window
    p.add_argument("--n_last_blocks", default=None, type=int,
                   help="iBOT: concatenate the CLS tokens of the last n blocks (iBOT's default 1); given with "
                        "--avgpool_patchtokens or alone, the feature is iBOT's (--linear_protocol ibot)")
    p.add_argument("--avgpool_patchtokens", default=None, type=int, choices=[0, 1, 2],
                   help="iBOT: 0 the CLS tokens, 1 the mean patch token (un-normalised, as iBOT), 2 both")
    p.add_argument("--window_size", default=None, type=int, help="iBOT: the swin_* window (iBOT's default 7)")
    # EsViT's additions: model config of Swin / CvT / ViL, packed-ImageNet flag
    p.add_argument("--cfg", default=None, type=str, help="EsViT YAML model config (Swin / CvT / ViL)")
    p.add_argument("--zip_mode", default=False, type=bool_flag, help="EsViT's packed ImageNet: not supported")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of --cfg")
    return p


def build_model(args, device: torch.device) -> torch.nn.Module:
    """Backbone ``create_backbone(arch, patch_size, num_classes=0)`` with the pretrained weights, eval mode."""
    try:
        extra = {}
        if getattr(args, "zip_mode", False):
            raise ValueError("--zip_mode reads Microsoft's packed ImageNet files, which ssvit does not support: "
                             "unpack to data_path/train and data_path/val")
        if getattr(args, "opts", None) and not getattr(args, "cfg", None):
            raise ValueError(f"KEY VALUE overrides {args.opts} need --cfg")
        if getattr(args, "cfg", None):
            from ssvit.models.esvit_config import backbone_kwargs_from_cfg, load_esvit_config
            extra = backbone_kwargs_from_cfg(args.arch, load_esvit_config(args.cfg, args.opts))
        if getattr(args, "window_size", None):  # iBOT's --window_size of its swin_* archs
            if not args.arch.startswith("swin"):
                raise ValueError(f"--window_size applies to swin_* archs, not '{args.arch}'")
            extra["window_size"] = args.window_size
        model = build_eval_backbone(args.arch, args.patch_size, args.pretrained_weights, args.checkpoint_key, device,
                                    **extra)
    except ValueError as e:  # unknown architecture, bad config
        raise UsageError(str(e)) from e
    print(f"Model {args.arch} {args.patch_size}x{args.patch_size} built.")
    return model


def knn_features(model: torch.nn.Module, args) -> torch.nn.Module:
    """The feature the k-NN compares: the model's output (DINO, EsViT), or with iBOT's ``--n_last_blocks`` /
    ``--avgpool_patchtokens`` iBOT's (its linear protocol's: ``LinearFeatures(model, "ibot", n, avgpool)``)."""
    if args.n_last_blocks is None and args.avgpool_patchtokens is None:
        return model
    from ssvit.evaluation.linear import LinearFeatures
    try:
        return LinearFeatures(model, "ibot", 1 if args.n_last_blocks is None else args.n_last_blocks,
                              args.avgpool_patchtokens or 0)
    except ValueError as e:  # a feature this backbone cannot give
        raise UsageError(str(e)) from e


def extract_feature_pipeline(args, device: torch.device):
    """Datasets -> loaders -> features (L2-normalised, every rank) and labels, as DINO's function."""
    model = knn_features(build_model(args, device), args)  # first: a bad checkpoint fails before any data is read
    dataset_train, dataset_val = build_knn_datasets(args)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    loaders = []
    for ds in (dataset_train, dataset_val):
        # The original gives the val loader no sampler (every rank does all of it); sharding both
        # is faster and gives the same features.
        sampler = DistributedSampler(ds, shuffle=False) if distributed else SequentialSampler(ds)
        loaders.append(DataLoader(ds, sampler=sampler, batch_size=args.batch_size_per_gpu,
                                  num_workers=args.num_workers, pin_memory=device.type == "cuda",
                                  drop_last=False))
    print(f"Data loaded with {len(dataset_train)} train and {len(dataset_val)} val imgs.")
    print("Extracting features for train set...")
    train_features, train_labels = extract_features(model, loaders[0], device, return_labels=True)
    print("Extracting features for val set...")
    test_features, test_labels = extract_features(model, loaders[1], device, return_labels=True)
    train_features = F.normalize(train_features, dim=1, p=2)
    test_features = F.normalize(test_features, dim=1, p=2)
    return train_features, test_features, train_labels, test_labels


def dump_features(directory: str, train_features, test_features, train_labels, test_labels) -> None:
    """Write the four files (float32 CPU features, int64 labels) atomically into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    tensors = (train_features.float().cpu(), test_features.float().cpu(),
               train_labels.long().cpu(), test_labels.long().cpu())
    for name, t in zip(FEATURE_FILES, tensors):
        save_atomic(t.contiguous(), os.path.join(directory, name))
    print(f"Features dumped to {directory}")


def load_features(directory: str):
    """Read the four files written by ``dump_features`` (``weights_only=True``) and check them."""
    out = []
    for name in FEATURE_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise DataError(f"--load_features: '{path}' not found (expected {', '.join(FEATURE_FILES)} "
                            f"as written by --dump_features)")
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(f"--load_features: cannot read '{path}': {e}") from e
        if not isinstance(t, torch.Tensor):
            raise DataError(f"--load_features: '{path}' does not hold a tensor")
        out.append(t)
    trf, tef, trl, tel = out
    if trf.ndim != 2 or tef.ndim != 2 or trf.shape[1] != tef.shape[1] or trl.shape != (trf.shape[0],) \
            or tel.shape != (tef.shape[0],):
        raise DataError(f"--load_features: inconsistent shapes train {tuple(trf.shape)}/{tuple(trl.shape)}, "
                        f"test {tuple(tef.shape)}/{tuple(tel.shape)}")
    return trf.float(), tef.float(), trl.long(), tel.long()


def run(args) -> dict:
    """Evaluate; returns ``{k: (top1, top5)}`` on rank 0 (``{}`` on other ranks)."""
    # as the original: --use_cuda only says where the feature bank and the k-NN live (false: CPU,
    # its advice against out-of-memory); the backbone extracts on the GPU whenever there is one
    if args.knn_chunk_size < 1:
        raise UsageError(f"--knn_chunk_size must be >= 1, got {args.knn_chunk_size}")
    info = init_distributed("auto", args.dist_url, args.dist_timeout)
    device = info.device
    want_cuda = bool(args.use_cuda) and device.type == "cuda"
    if args.use_cuda and not want_cuda:
        print("--use_cuda: no GPU available, the k-NN runs on the CPU")
    sim_dtype = knn_similarity_dtype(args.knn_dtype, device if want_cuda else torch.device("cpu"))
    t0 = time.perf_counter()
    if args.load_features:
        train_features, test_features, train_labels, test_labels = load_features(args.load_features)
    else:
        train_features, test_features, train_labels, test_labels = extract_feature_pipeline(args, device)
    extract_s = time.perf_counter() - t0
    # the k-NN runs on rank 0 alone, with no collective: the ranks end their process group here, so
    # that none waits in a barrier (or past --dist_timeout) while rank 0 classifies
    finish()

    results: dict = {}
    if info.is_main:
        if args.dump_features and not args.load_features:
            dump_features(args.dump_features, train_features, test_features, train_labels, test_labels)
        knn_device = device if want_cuda else torch.device("cpu")
        train_features, test_features = train_features.to(knn_device), test_features.to(knn_device)
        train_labels, test_labels = train_labels.to(knn_device), test_labels.to(knn_device)
        print(f"Features are ready! ({'loaded' if args.load_features else 'extracted'} in {extract_s:.1f} s)\n"
              f"Start the k-NN classification ({knn_device.type}, similarities in "
              f"{str(sim_dtype or train_features.dtype).replace('torch.', '')}).")
        n_train = train_features.shape[0]
        for k in args.nb_knn:
            if k > n_train:
                print(f"Skipping k={k}: only {n_train} training images")
                continue
            t1 = time.perf_counter()
            top1, top5 = knn_classifier(train_features, train_labels, test_features, test_labels, k,
                                        args.temperature, chunk_size=args.knn_chunk_size,
                                        similarity_dtype=sim_dtype)
            if knn_device.type == "cuda":
                torch.cuda.synchronize(knn_device)
            print(f"{k}-NN classifier result: Top1: {top1}, Top5: {top5} ({time.perf_counter() - t1:.2f} s)")
            results[k] = (top1, top5)
    return results


def knn_similarity_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    """``--knn_dtype`` -> the similarity dtype for ``knn_classifier`` (None = the features' fp32).
    Half precision on the CPU is refused: its matmuls are far slower there than fp32."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type != "cuda":
        raise UsageError(f"--knn_dtype {name} is for a GPU (the k-NN runs on the CPU here: use fp32 or auto)")
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[name]


def main(argv: Optional[list] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; raises ``CheckpointError`` / ``DataError``
    / ``UsageError`` on bad input. Returns ``{k: (top1, top5)}``."""
    args = parse_with_config(get_args_parser(), argv)
    return run(args)


def cli(argv: Optional[list] = None) -> int:
    """Command-line entry: data/weights errors -> message on stderr, exit status 2, no traceback."""
    return exit_status(lambda: main(argv), (CheckpointError, DataError, UsageError, DeviceError), "eval_knn.py")
