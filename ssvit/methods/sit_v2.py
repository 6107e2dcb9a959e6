"""SiT-v2 (Sara-Ahmed/SiT HEAD: GMML corruption + reconstruction + momentum contrastive) on the
shared engine: ``--method sit_v2``.

Student and EMA teacher are ``FullPipline(ViT, CLSHead(D, out_dim), RECHead(D, patch))``. Each image
gives two crops (``DataAugmentationSiT``: DINO's global crops, blur 1.0 / 0.1 + solarisation 0.2),
each corrupted by ``GMML_drop_rand_patches`` (``--drop_perc``, ``--drop_type``, ``--drop_align``); per
batch ``GMML_replace_list`` re-corrupts about half of them from a clean image of the batch
(``--drop_replace``). The teacher sees the clean crops, the student the corrupted ones:
``loss = SimCLR(simclr_temp)(s_cls, t_cls) + lmbda * mean |rec - clean|`` over the masked pixels.
DINO's optimisation (AdamW with DINO's groups, lr x batch / 256 with warm-up and cosine, weight
decay 0.04 -> 0.1, per-parameter clipping 3.0, teacher momentum 0.996 -> 1); the teacher's
``RECHead`` is EMA-updated and never used, as the original.

Differences (documented): the corruption is drawn from the per-sample seeded NumPy state in the
dataset and from a generator seeded by (seed, rank, epoch, iteration) for the batch re-corruption,
which runs in the training step rather than the loader's collate function (the original re-seeds
NumPy from OS entropy on every corruption call: not reproducible, so no exact resume);
``SimCLR`` works without a process group; the reconstruction grid is written as PNG.
"""
from __future__ import annotations

import argparse
import os
import random

import numpy as np
import torch
import torch.nn as nn
from torchvision import transforms

from ..data.transforms import GaussianBlur, Solarization, flip_and_color_jitter, normalize_transform
from ..models import create_backbone
from ..models.sit import CLSHead, FullPipline, RECHead
from ..objectives.sit import GMML_drop_rand_patches, GMML_replace_list, SimCLR
from ..utils.precision import fp32_island
from ..engine.schedules import linear_scaled_cosine
from ..engine.task import TrainingTask


class DataAugmentationSiT:
    """PIL image -> ``(clean_crops[2], corrupted_crops[2], masks_crops[2])`` (SiT-v2's transform)."""

    def __init__(self, args: argparse.Namespace):
        self.drop_perc, self.drop_type, self.drop_align = args.drop_perc, args.drop_type, args.drop_align
        size = args.global_crops_size
        crop = transforms.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC)
        self.global_transfo1 = transforms.Compose([crop, flip_and_color_jitter(), GaussianBlur(1.0),
                                                   normalize_transform()])
        self.global_transfo2 = transforms.Compose([crop, flip_and_color_jitter(), GaussianBlur(0.1), Solarization(0.2),
                                                   normalize_transform()])

    def __call__(self, image):
        clean, corrupted, masks = [], [], []
        for tf in (self.global_transfo1, self.global_transfo2):
            im = tf(image)
            bad, mask = im.detach().clone(), torch.zeros_like(im)
            if self.drop_perc > 0:
                bad, mask = GMML_drop_rand_patches(bad, max_replace=self.drop_perc, drop_type=self.drop_type,
                                                   align=self.drop_align)
            clean.append(im)
            corrupted.append(bad)
            masks.append(mask)
        return clean, corrupted, masks


class SiTv2Loss(nn.Module):
    """``c_loss + lmbda * r_loss``: ``SimCLR(temp)`` between the student's and the teacher's view
    outputs, and the L1 of the reconstruction against the clean crops averaged over the masked
    elements. Returns ``(loss, c_loss, r_loss)``."""

    def __init__(self, temp: float = 0.2, lmbda: float = 1.0):
        super().__init__()
        self.simclr, self.lmbda = SimCLR(temp), lmbda

    @fp32_island
    def forward(self, s_cls, t_cls, s_recons, clean, masks, epoch: int = 0):
        c_loss = self.simclr(s_cls, t_cls, epoch)
        recloss = torch.nn.functional.l1_loss(s_recons, clean, reduction="none")
        r_loss = recloss[masks == 1].mean()
        return c_loss + self.lmbda * r_loss, c_loss, r_loss


class SiTv2(TrainingTask):
    name = "sit_v2"
    loss_key = "sit_loss"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        S = argparse.SUPPRESS
        p = parser.add_argument_group("SiT-v2 (HEAD main.py)")
        p.add_argument("--drop_perc", type=float, default=0.5, help="Drop X percentage of the input image")
        p.add_argument("--drop_replace", type=float, default=0.3, help="Drop X percentage of the input image")
        p.add_argument("--drop_align", type=int, default=1, help="Align drop with patches")
        p.add_argument("--drop_type", type=str, default="zeros", help="Drop Type (noise, zeros, rand; '-'-separated)")
        p.add_argument("--lmbda", type=int, default=1, help="Scaling factor for the reconstruction loss")
        p.add_argument("--out_dim", default=256, type=int, help="Dimensionality of output features")
        p.add_argument("--simclr_temp", default=0.2, type=float, help="tempreture for SimCLR.")
        p.add_argument("--momentum_teacher", default=0.996, type=float, help="EMA parameter for teacher update.")
        p.add_argument("--model", dest="arch", default=S, help="vit_tiny, vit_small, vit_base (--arch)")
        p.add_argument("--batch_size", dest="batch_size_per_gpu", type=int, default=S, help="per-GPU batch (32)")
        p.add_argument("--data_set", "--data-set", dest="dataset", default=S, type=_v2_dataset, help="dataset")
        p.add_argument("--data_location", dest="data_path", default=S, help="dataset root (--data_path)")
        p.add_argument("--cls_hidden_dim", default=4096, type=int, help="CLSHead width (the original's 4096)")
        p.add_argument("--cls_nlayers", default=3, type=int, help="CLSHead depth (the original's 3)")
        parser.set_defaults(arch="vit_small", patch_size=16, out_dim=256, epochs=800, batch_size_per_gpu=32, lr=5e-4,
                            warmup_epochs=10, min_lr=1e-6, weight_decay=0.04, weight_decay_end=0.1, clip_grad=3.0,
                            momentum_teacher=0.996, drop_path_rate=0.1, saveckp_freq=20, optimizer="adamw",
                            global_crops_size=224, output_dir="checkpoints/vit_small/trial",
                            dataset="pets")  # main.py's --data_set default: Pets

    @classmethod
    def check_args(cls, args):
        if not 0 <= args.momentum_teacher <= 1:
            raise ValueError(f"--momentum_teacher must be in [0, 1], got {args.momentum_teacher}")
        size = args.global_crops_size
        if size < args.patch_size or size % args.patch_size:
            raise ValueError(f"--global_crops_size ({size}) must be a multiple of --patch_size ({args.patch_size})")
        if not 0 <= args.drop_perc <= 1 or not 0 <= args.drop_replace <= 1:
            raise ValueError("--drop_perc and --drop_replace are fractions in [0, 1]")
        if args.drop_align < 1 or args.global_crops_size % args.drop_align:
            raise ValueError(f"--drop_align must be >= 1 and divide the crop size ({args.global_crops_size})")
        if args.out_dim < 1 or args.simclr_temp <= 0:
            raise ValueError("--out_dim must be positive and --simclr_temp > 0")
        if args.batch_size_per_gpu < 2:
            raise ValueError("SiT-v2's heads use BatchNorm: batches need at least 2 images")

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args

        def pipeline(drop_path: float) -> nn.Module:
            bb = create_backbone(args.arch, patch_size=args.patch_size, drop_path_rate=drop_path,
                                 img_size=args.global_crops_size)
            return FullPipline(bb, CLSHead(bb.embed_dim, args.out_dim, args.cls_nlayers, args.cls_hidden_dim),
                               RECHead(bb.embed_dim, patch_size=args.patch_size))
        self.student = pipeline(args.drop_path_rate)
        self.teacher = pipeline(0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.criterion = SiTv2Loss(args.simclr_temp, args.lmbda)

    def schedules(self, args, niter_per_ep, bs_total):
        """main_SiT.py's: DINO's cosine lr / weight decay / teacher momentum."""
        return linear_scaled_cosine(args, niter_per_ep, bs_total, args.momentum_teacher)

    def build_transform(self, args):
        return DataAugmentationSiT(args)

    def recorrupt(self, clean, corrupted, masks, epoch: int, it: int):
        """``collate_batch``: each view's batch re-corrupted by ``GMML_replace_list`` (seeded per step)."""
        if self.args.drop_replace <= 0:
            return corrupted, masks
        from ..utils.distributed import get_rank
        seed = (int(self.args.seed) * 1_000_003 + get_rank() * 7919 + epoch * 100_003 + it) % (2 ** 32)
        rng, py_rng = np.random.RandomState(seed), random.Random(seed)
        out_c, out_m = [], []
        for v in range(2):
            c, m = GMML_replace_list(clean[v], corrupted[v], masks[v], max_replace=self.args.drop_replace,
                                     align=self.args.drop_align, rng=rng, py_rng=py_rng)
            out_c.append(c)
            out_m.append(m)
        return out_c, out_m

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        clean, corrupted, masks = batch
        corrupted, masks = self.recorrupt(clean, corrupted, masks, epoch, it)
        t_cls, _ = self.teacher(torch.cat(clean), recons=False)
        s_cls, s_recons = student(torch.cat(corrupted))
        loss, c_loss, r_loss = self.criterion(s_cls, t_cls, s_recons, torch.cat(clean), torch.cat(masks), epoch)
        if it == 0:
            self.save_reconstructions(epoch, clean[0], corrupted[0], s_recons, masks[0])
        return loss, {"c_loss": c_loss.item(), "r_loss": r_loss.item()}

    def save_reconstructions(self, epoch, clean, corrupted, recons, mask) -> None:
        """The original's per-epoch grid: clean, corrupted, reconstructed and mask rows (<= 15 each)."""
        from ..objectives.sit_eval import save_reconstruction_grid
        from ..utils.distributed import is_main_process
        if not is_main_process() or not getattr(self.args, "output_dir", None):
            return
        path = os.path.join(self.args.output_dir, "reconstruction_samples", f"epoch_{epoch:05d}.png")
        b = clean.shape[0]
        save_reconstruction_grid(path, clean, corrupted, recons[:b].detach(), mask)


_V2_DATASETS = {"imagenet": "imagefolder", "imagefolder": "imagefolder", "stl10": "stl10", "cifar10": "cifar10",
                "cifar100": "cifar100", "flowers": "flowers102", "flowers102": "flowers102", "pets": "pets",
                "cars": "cars", "aircraft": "aircraft", "tinyimagenet": "tinyimagenet", "fashion_mnist": "fashion_mnist",
                "synthetic": "synthetic"}
#: SiT-v2's --data_set names whose file layouts ssvit does not read (refused by name, with the way round)
_V2_UNREAD = {"cub": "CUB-200-2011's images.txt / train_test_split.txt layout is not read: give it as an ImageFolder "
                     "(--data_set ImageFolder)",
              "imagenet5p": "ImageNet5p's 5 % subset list is not read: give the subset as an ImageFolder "
                            "(--data_set ImageFolder)"}


def _v2_dataset(name: str) -> str:
    key = name.lower().replace("-", "_")
    if key in _V2_UNREAD:
        raise argparse.ArgumentTypeError(f"--data_set {name}: {_V2_UNREAD[key]}")
    if key not in _V2_DATASETS:
        raise argparse.ArgumentTypeError(f"unknown --data_set {name!r}; known: {', '.join(sorted(_V2_DATASETS))}")
    return _V2_DATASETS[key]
