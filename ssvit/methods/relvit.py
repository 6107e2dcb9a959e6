"""RelViT (Camporese et al. 2022; guglielmocamporese/relvit) on the shared engine: ``--method relvit``.

One network (no teacher): ``RelViT`` over a ViT whose patch tokens predict the 9-class spatial
relation of every ordered pair (``--use_relations``), optionally the absolute positions
(``--use_abs_positions``), distances (``--use_distances``), angles (``--use_angles``) and, for
``--task downstream``, the labels (``--use_supervision``). The loss is the plain sum of the enabled
tasks. Modes as the seed README: upstream (SSL; the published scripts train rel + abs_pos **without**
positional embeddings), downstream (supervised finetuning from an upstream checkpoint,
``--model_checkpoint``), downstream-only (clf + rel + abs_pos from scratch), ``--mode validation``.

The original's recipe: AdamW (or SGD momentum 0.9) on every parameter with ``--weight_decay``, the
``DecayLR`` schedule per step (linear warm-up from 0 over the first tenth of the steps, then
``t = a * 1.25e-6 + (1 - a) * lr`` with ``a = 1 - cos(step / max_steps * pi / 2)``; the lr is not
scaled by the batch), global-norm clipping ``--grad_clip_val 1.0``, fp32, validation every epoch
(best checkpoint on ``val_loss`` upstream, ``val_acc_clf`` downstream).

Data (``RelViTTransform``): the per-dataset image transform and normalisation, then for upstream
training the optional per-sample patch permutation (``--shuffle_patches``), megapatches
(``--mega_patches --side_megapatches``) and the per-patch transform (``--patch_trans``), the SSL
targets from ``SSLSignal``. QUIRK kept (flagged in the log): patches are re-ordered only inside the
patch transform, so ``--shuffle_patches`` with ``--patch_trans none`` permutes the targets, not the
image.

Differences (documented): the engine drops the last partial batch (the original keeps it, so its
``max_steps`` counts it); datasets are never downloaded unless ``--download true``; the Swin backbone is
ssvit's (EsViT's) Swin -- its classifier is ``clf_head`` on the pooled last-stage tokens, where the
original uses the backbone's own ``head`` -- and T2T-ViT is not offered (timm has none).
"""
from __future__ import annotations

import argparse
import math
import os
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms

from ..models.relvit import RelViT
from ..objectives.relvit import (SSLSignal, accuracy, create_megapatches_grid, cross_entropy,
                                 get_patch_transforms, image2patches, patches2image)
from ..engine.task import ClipPolicy, Schedules, TrainingTask

# name: (ssvit dataset, image side, patch size, classes, (mean, std), transform family)
_IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASETS = {
    "cifar10": ("cifar10", 32, 4, 10, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), "small"),
    "cifar10_14": ("cifar10", 14, 2, 10, ((0.4913, 0.4820, 0.4463), (0.2275, 0.2244, 0.2442)), "resized"),
    "cifar10_28": ("cifar10", 28, 4, 10, ((0.4916, 0.4824, 0.4467), (0.2394, 0.2360, 0.2547)), "resized"),
    "cifar10_36": ("cifar10", 36, 4, 10, ((0.4917, 0.4824, 0.4468), (0.2411, 0.2376, 0.2563)), "resized"),
    "cifar10_56": ("cifar10", 56, 8, 10, ((0.4917, 0.4824, 0.4468), (0.2411, 0.2377, 0.2563)), "resized"),
    "cifar10_112": ("cifar10", 112, 16, 10, ((0.4917, 0.4824, 0.4468), (0.2411, 0.2377, 0.2563)), "resized"),
    "cifar10_224": ("cifar10", 224, 32, 10, ((0.4914, 0.4822, 0.4465), (0.2413, 0.2378, 0.2564)), "resized"),
    "cifar100": ("cifar100", 32, 4, 100, ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2761)), "small"),
    "cifar100_224": ("cifar100", 224, 32, 100, ((0.5070, 0.4865, 0.4409), (0.2622, 0.2513, 0.2714)), "resized"),
    "svhn": ("svhn", 32, 4, 10, ((0.4378, 0.4439, 0.4729), (0.1981, 0.2011, 0.1970)), "small"),  # the original lacks it
    "svhn_224": ("svhn", 224, 32, 10, ((0.4377, 0.4438, 0.4728), (0.1960, 0.1989, 0.1955)), "resized"),
    "flower102": ("flowers102", 224, 32, 102, _IMNET, "large"),  # no statistics in the original (KeyError)
    "flower102_112": ("flowers102", 112, 16, 102, ((0.5115, 0.4160, 0.3410), (0.2951, 0.2488, 0.2882)), "resized"),
    "flower102_56": ("flowers102", 56, 8, 102, ((0.5136, 0.4163, 0.3426), (0.2887, 0.2414, 0.2831)), "resized"),
    "tiny_imagenet": ("tinyimagenet", 64, 8, 200, ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)), "small"),
    "tiny_imagenet_224": ("tinyimagenet", 224, 32, 200, ((0.4805, 0.4484, 0.3978), (0.2667, 0.2584, 0.2722)),
                          "resized"),
    "imagenet100": ("imagenet100", 224, 32, 100, ((0.4595, 0.4520, 0.3900), (0.2547, 0.2385, 0.2548)), "large"),
    "imagenet100_112": ("imagenet100", 112, 16, 100, ((0.4583, 0.4505, 0.3889), (0.2512, 0.2347, 0.2510)), "resized"),
    "imagenet100_56": ("imagenet100", 56, 8, 100, ((0.4581, 0.4503, 0.3886), (0.2511, 0.2345, 0.2509)), "resized"),
    "imagenet100_28": ("imagenet100", 28, 4, 100, ((0.4582, 0.4504, 0.3887), (0.2512, 0.2345, 0.2508)), "resized"),
    "imagenet_subset": ("imagefolder", 224, 32, 1000, _IMNET, "large"),
    # ssvit additions: offline data for CPU runs
    "fashion_mnist": ("fashion_mnist", 28, 4, 10, ((0.2860,) * 3, (0.3530,) * 3), "small"),
    "synthetic": ("synthetic", 32, 4, 10, _IMNET, "small"),
    "synthetic_64": ("synthetic", 64, 32, 10, _IMNET, "resized"),  # 2x2 stride-32 tokens: Swin smoke runs
}


def image_transform(dataset: str, img_height: int, train: bool):
    """RelViT's ``get_transforms``: large sets RRC + flip (eval: Resize 256, CenterCrop), resized
    variants RRC + flip (eval: Resize((h, h))), small sets RandomCrop(h, padding=4) + flip (eval:
    Resize(h)); then ToTensor, grey -> RGB, the dataset's normalisation."""
    _, _, _, _, (mean, std), family = DATASETS[dataset]
    rgb = transforms.Lambda(lambda im: im.convert("RGB"))
    if train:
        first = [transforms.RandomCrop(img_height, padding=4)] if family == "small" else \
            [transforms.RandomResizedCrop(img_height)]
        first.append(transforms.RandomHorizontalFlip())
    elif family == "large":
        first = [transforms.Resize(256), transforms.CenterCrop(img_height)]
    elif family == "resized":
        first = [transforms.Resize((img_height, img_height))]
    else:
        first = [transforms.Resize(img_height)]
    return transforms.Compose([rgb, *first, transforms.ToTensor(), transforms.Normalize(mean, std)])


class RelViTTransform:
    """PIL image -> ``{'images', 'relations', 'abs_positions', 'distances', 'angles'}`` (as enabled): the
    original's ``ShuffleDataset`` (upstream) or ``ImageDataset`` (downstream) sample, labels aside."""

    def __init__(self, args, train: bool):
        self.args, self.train = args, train
        self.tf = image_transform(args.relvit_dataset, args.img_height, train)
        self.upstream = args.task == "upstream"
        side = args.side_megapatches if (self.upstream and args.mega_patches) else args.img_height // args.patch_size
        self.num_patches, self.side = side * side, side
        self.signal = SSLSignal(args.use_relations, args.use_dist, args.use_angle, args.use_abs_positions) \
            if (args.use_relations or args.use_dist or args.use_angle or args.use_abs_positions) else None
        self.patch_tf = get_patch_transforms(args.patch_trans, args.patch_size) if (self.upstream and train) else None
        self.shuffle = bool(args.shuffle_patches) and self.upstream and train

    def __call__(self, img) -> dict:
        x = self.tf(img)
        perm = torch.randperm(self.num_patches) if self.shuffle else torch.arange(self.num_patches)
        if self.upstream and self.args.mega_patches:
            x = create_megapatches_grid(x, self.args.side_megapatches, self.args.patch_size,
                                        antialias=self.args.megapatch_antialias)
        if self.patch_tf is not None:
            _, H, W = x.shape
            p = self.patch_tf(image2patches(x, self.args.patch_size))
            x = patches2image(p[:, perm], (H, W))  # the only place patches are re-ordered (QUIRK)
        out = {"images": x}
        if self.args.debug_dataset:  # the original's --debug_dataset extras
            out["idxs_shuffle"] = perm
        if self.signal is not None:
            out.update(self.signal(perm.numpy().reshape(self.side, self.side)))
        return out


def decay_lr(lr_init: float, max_steps: int, lr_end: float = 1.25e-6) -> np.ndarray:
    """The original's ``DecayLR`` callback per step: ``cos_anneal_warmup(0, max_steps, lr_init, lr_end,
    max_steps // 10, step)``."""
    e_w = max_steps // 10
    out = np.empty(max_steps, dtype=np.float64)
    for step in range(max_steps):
        if step >= e_w:
            a = max(0.0, min(1.0, step / max_steps))
            a = 1.0 - math.cos(a * math.pi / 2)
            out[step] = a * lr_end + (1 - a) * lr_init
        else:
            a = max(0.0, min(1.0, step / e_w))
            out[step] = a * lr_init
    return out


class RelViTMethod(TrainingTask):
    name = "relvit"
    has_ema_teacher = False
    # the relation heads' ``v_lin`` is computed and discarded, and ``pos_embed`` is unused without
    # --use_positional_embeddings (the upstream recipe): Lightning's DDP (find_unused_parameters=True by default)
    # let the original run; here DDP is told the unused set is fixed
    ddp_static_graph = True
    loss_key = "relvit_loss"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.conflict_handler = parser._optionals.conflict_handler = "resolve"
        p = parser.add_argument_group("RelViT (main.py get_args)")
        p.add_argument("--mode", default="train", choices=["train", "training", "train_linear", "validation", "validate",
                                                            "validating", "validate_lienar", "validation_linear",
                                                            "validating_linear"],
                       help="train (train_linear: the same, as the original) or validation (of the resumed checkpoint)")
        p.add_argument("--task", default="upstream", choices=["upstream", "downstream"])
        p.add_argument("--exp_id", default="", type=str)
        p.add_argument("--dataset", dest="relvit_dataset", default="cifar10", choices=sorted(DATASETS),
                       help="the original's dataset names (ImageFolder ones read --data_base_path/train and /val)")
        p.add_argument("--data_base_path", dest="data_path", default="./datasets/data", type=str)
        p.add_argument("--labels_path", default="", type=str)
        p.add_argument("--batch_size", dest="batch_size_per_gpu", default=256, type=int)
        p.add_argument("--num_gpus", default=1, type=int, help="absorbed: use torchrun --nproc_per_node N")
        p.add_argument("--logger", default="tensorboard", type=str, help="absorbed: ssvit logs to log.txt / TensorBoard")
        p.add_argument("--debug_dataset", action="store_true")
        p.add_argument("--shuffle_patches", action="store_true")
        p.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"])
        p.add_argument("--metric_monitor", default="val_acc_rel", type=str, help="overridden by --task, as the original")
        p.add_argument("--grad_clip_val", default=1.0, type=float, help="global-norm clipping (Lightning's)")
        p.add_argument("--backbone", default="vit", choices=["vit", "swin"], help="vit or swin (timm has no T2T-ViT)")
        p.add_argument("--model_size", default="small", choices=["pico", "tiny", "small", "base"])
        p.add_argument("--model_checkpoint", default="", type=str, help="initial weights (RelViT .ckpt or ssvit)")
        p.add_argument("--patch_size", default=-1, type=int, help="-1: the per-dataset table")
        p.add_argument("--use_relations", action="store_true")
        p.add_argument("--use_supervision", action="store_true")
        p.add_argument("--use_distances", dest="use_dist", action="store_true")
        p.add_argument("--use_angles", dest="use_angle", action="store_true")
        p.add_argument("--use_abs_positions", action="store_true")
        p.add_argument("--use_positional_embeddings", action="store_true")
        p.add_argument("--mega_patches", action="store_true")
        p.add_argument("--side_megapatches", default=5, type=int)
        p.add_argument("--megapatch_antialias", default=False, action="store_true",
                       help="antialias the megapatch resize (the original's torchvision 0.9 did not)")
        p.add_argument("--freeze_fet_enc", action="store_true")
        p.add_argument("--dropout", default=0.1, type=float)
        p.add_argument("--dropout_rel", default=0.0, type=float, help="only with --smooth_rel > 0 (as the original)")
        p.add_argument("--smooth_rel", default=0.0, type=float)
        p.add_argument("--attn_drop", default=0.0, type=float)
        p.add_argument("--attn_mask", default="", type=str, help="'', diagonal, diagonal_clf_row")
        p.add_argument("--add_clf_to_patches", action="store_true")
        p.add_argument("--drop_path_rate", default=0.0, type=float)
        p.add_argument("--proj_dropout", default=0.0, type=float)
        p.add_argument("--weight_decay", default=0.0, type=float)
        p.add_argument("--use_clf_token", action="store_true", default=True)
        p.add_argument("--patch_trans", default="colJitter:0.8-grayScale:0.2", type=str)
        parser.set_defaults(seed=35771, epochs=100, lr=5e-4, weight_decay_end=None, clip_grad=0.0, use_fp16=False,
                            num_workers=8, warmup_epochs=0, val_freq=1, output_dir="tmp/relvit", saveckp_freq=0)

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        """The original's per-dataset tables: ssvit dataset, image size, class count, ``--patch_size -1``."""
        ds, size, patch, classes, _, _ = DATASETS[args.relvit_dataset]
        args.dataset, args.img_height, args.num_classes = ds, size, classes
        if args.patch_size == -1:
            args.patch_size = patch

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        cls.resolve_args(args)
        if args.img_height % args.patch_size:
            raise ValueError(f"--patch_size {args.patch_size} must divide the image size {args.img_height}")
        if args.optimizer == "adam":
            if args.weight_decay:
                raise ValueError("--optimizer adam with weight decay (L2) is not offered: use adamw")
            args.optimizer = "adamw"  # Adam and AdamW are the same update without weight decay
        args.weight_decay_end = args.weight_decay
        args.global_crops_size = args.img_height
        args.validate_only = args.mode.startswith("valid")
        if args.labels_path:
            raise ValueError("--labels_path (the original's ImageNet-subset class list) is not supported: give the "
                             "subset as an ImageFolder with --dataset imagenet_subset")
        if args.task == "downstream":
            args.metric_monitor, args.metric_maxmin = "val_acc_clf", "max"
        else:
            args.metric_monitor, args.metric_maxmin = "val_loss", "min"
        if not (args.use_relations or args.use_supervision or args.use_dist or args.use_angle or args.use_abs_positions):
            raise ValueError("no task enabled: give --use_relations / --use_abs_positions / --use_supervision / ...")
        if args.task == "downstream" and not args.use_supervision and args.metric_monitor == "val_acc_clf":
            raise ValueError("--task downstream monitors val_acc_clf: it needs --use_supervision")
        if args.backbone == "swin":
            if args.model_size not in ("pico", "tiny", "small", "base"):
                raise ValueError(f"--backbone swin --model_size {args.model_size}: swin_{args.model_size} does not exist")
            if args.patch_size != 32 or args.img_height % 32:
                raise ValueError("--backbone swin predicts relations between its stride-32 tokens: it needs "
                                 f"--patch_size 32 and images a multiple of 32 (got {args.patch_size}, {args.img_height})")
            if args.attn_mask:
                raise ValueError("--attn_mask applies to the ViT backbone")
        if args.mega_patches and not 1 <= args.side_megapatches <= args.img_height // args.patch_size:
            raise ValueError(f"--side_megapatches must be in [1, {args.img_height // args.patch_size}]")
        if args.shuffle_patches and args.patch_trans in ("none", "None", ""):
            warnings.warn("QUIRK kept: --shuffle_patches with --patch_trans none permutes the targets, not the image")
        if args.model_checkpoint and not os.path.isfile(args.model_checkpoint):
            from ..utils.checkpoint import CheckpointError
            raise CheckpointError(f"--model_checkpoint: '{args.model_checkpoint}' does not exist")

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.student = RelViT(args, args.num_classes, 9, use_relations=args.use_relations,
                              use_positional_emb=args.use_positional_embeddings,
                              use_supervision=args.use_supervision, patch_size=args.patch_size, dropout=args.dropout,
                              freeze_fet_enc=args.freeze_fet_enc, use_distances=args.use_dist,
                              use_angles=args.use_angle, use_abs_positions=args.use_abs_positions,
                              proj_dropout=args.proj_dropout, use_clf_token=args.use_clf_token)
        if args.model_checkpoint:
            from ..models.relvit_ckpt import load_relvit_weights
            load_relvit_weights(self.student, args.model_checkpoint)
        self.teacher = None
        self.criterion = nn.Module()
        self.best_metric = args.metric_monitor[len("val_"):]
        self.best_mode = args.metric_maxmin
        self._val_loader = None

    def dataset_path(self, args):
        from ..data import split_root
        return split_root(args.dataset, args.data_path, "train")

    def build_transform(self, args):
        return RelViTTransform(args, train=True)

    def schedules(self, args, niter_per_ep, bs_total):
        steps = args.epochs * niter_per_ep
        return Schedules(decay_lr(args.lr, steps), np.full(steps, args.weight_decay, dtype=np.float64), None)

    def param_groups(self, student):
        """The original optimises ``self.parameters()`` in one group with one weight decay."""
        params = [p for p in getattr(student, "module", student).parameters() if p.requires_grad]
        return [{"params": params, "wd_scale": 1.0}]

    def clip_policy(self, args):
        if args.grad_clip_val:  # Lightning's gradient_clip_val: the global norm
            return ClipPolicy("global_norm", float(args.grad_clip_val))
        return super().clip_policy(args)

    def losses(self, logits: dict, batch: dict, labels, part: str) -> tuple[torch.Tensor, dict]:
        """The original's ``training_step``: the sum of the enabled task losses and the logged metrics."""
        a = self.args
        loss = 0.0
        logs = {}
        if a.use_supervision:
            l_clf = F.cross_entropy(logits["clf"], labels)
            loss = loss + l_clf
            logs.update(loss_clf=l_clf.item(), acc_clf=accuracy(logits["clf"], labels).item())
        if a.use_relations:
            l_rel = cross_entropy(logits["rel"], batch["relations"], smooth=a.smooth_rel,
                                  dropout=a.dropout_rel if part == "train" else 0.0)
            loss = loss + l_rel
            logs.update(loss_rel=l_rel.item(), acc_rel=accuracy(logits["rel"], batch["relations"]).item())
        if a.use_dist:
            l_dist = F.mse_loss(logits["dist"], batch["distances"].unsqueeze(1))
            loss = loss + l_dist
            logs.update(loss_dist=l_dist.item())
        if a.use_angle:
            l_angle = F.mse_loss(logits["angle"], batch["angles"].unsqueeze(1))
            loss = loss + l_angle
            logs.update(loss_angle=l_angle.item())
        if a.use_abs_positions:
            l_abs = F.cross_entropy(logits["abs_pos"], batch["abs_positions"])
            loss = loss + l_abs
            logs.update(loss_abs_pos=l_abs.item(), acc_abs_pos=accuracy(logits["abs_pos"], batch["abs_positions"]).item())
        return loss, logs

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        loss, logs = self.losses(student(batch["images"]), batch, labels, "train")
        return loss, logs

    # ---- validation every epoch (Lightning's default), best checkpoint on the monitored metric
    def val_loader(self):
        if self._val_loader is None:
            from ..engine.validation import validation_loader
            a = self.args
            self._val_loader = validation_loader(a, RelViTTransform(a, train=False), a.batch_size_per_gpu,
                                                 seed=a.seed).loader
        return self._val_loader

    def evaluate(self) -> dict:
        from ..engine.validation import weighted_mean

        def batch_metrics(model, item, device):
            batch, labels, *_ = item
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = labels.to(device)
            loss, logs = self.losses(model(batch["images"]), batch, labels, "val")
            return labels.shape[0], {"loss": float(loss), **logs}
        return weighted_mean(self.student, self.val_loader(), batch_metrics)

    def extra_checkpoint_state(self):
        # read by the evaluation loaders: without positional embeddings the pos_embed is untrained
        return {"relvit_positional_embeddings": bool(self.args.use_positional_embeddings)}

    def validate(self, epoch):
        stats = self.evaluate()
        print("Validation: " + "  ".join(f"val_{k}: {v:.4f}" for k, v in stats.items()))
        return stats
