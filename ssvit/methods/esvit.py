"""EsViT (Li et al., ICLR 2022): DINO's view-level self-distillation plus region-level matching
(DDINO) on multi-stage backbones (Swin, CvT, ViL) or ViT (microsoft/esvit ``main_esvit.py``).

Student / teacher = ``EsViTWrapper(backbone, head, head_dense)`` whose state dicts use EsViT's flat
layout (backbone keys, ``head.*``, ``head_dense.*``); loss ``DDINOLoss`` with
``--use_dense_prediction True``, else DINO's loss (with EsViT's optional mixup of student views).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torchvision import transforms

from ..config import bool_flag
from ..data.transforms import DataAugmentationDINO
from ..models import DINOHead, create_backbone
from ..models.esvit_config import backbone_kwargs_from_cfg, is_multistage, load_esvit_config
from ..models.esvit_wrapper import EsViTWrapper
from ..objectives import DDINOLoss, DINOLoss
from .dino_family import DINOFamily, check_self_distillation_args

AUG_OPTS = ("dino_aug", "deit_aug")


def _as_list(v) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


def add_esvit_args(parser: argparse.ArgumentParser) -> None:
    """main_esvit.py's flags that main_dino.py lacks, and its different defaults."""
    p = parser
    # EsViT takes lists: one local-crop count per local-crop size
    for action in p._actions:
        if action.dest in ("local_crops_number", "local_crops_size"):
            action.nargs = "+"
    p.add_argument("--use_dense_prediction", default=False, type=bool_flag,
                   help="add the region-level (DDINO) loss and the dense head")
    p.add_argument("--cfg", default=None, type=str,
                   help="EsViT YAML model config (MODEL.SPEC ..., BASE inheritance); trailing KEY VALUE pairs override it")
    p.add_argument("--aug-opt", dest="aug_opt", default="dino_aug", type=str, help="dino_aug or deit_aug")
    p.add_argument("--color-jitter", dest="color_jitter", type=float, default=0.4)
    p.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", help="deit_aug: timm AutoAugment policy")
    p.add_argument("--train-interpolation", dest="train_interpolation", type=str, default="bicubic")
    p.add_argument("--reprob", type=float, default=0.25, help="deit_aug: random erase probability")
    p.add_argument("--remode", type=str, default="pixel")
    p.add_argument("--recount", type=int, default=1)
    p.add_argument("--resplit", action="store_true", default=False)
    p.add_argument("--use_mixup", type=bool_flag, default=False, help="mixup/cutmix of the student views")
    p.add_argument("--num_mixup_views", type=int, default=10)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--cutmix-minmax", dest="cutmix_minmax", type=float, nargs="+", default=None)
    p.add_argument("--mixup-prob", dest="mixup_prob", type=float, default=1.0)
    p.add_argument("--mixup-switch-prob", dest="mixup_switch_prob", type=float, default=0.5)
    p.add_argument("--mixup-mode", dest="mixup_mode", type=str, default="batch")
    p.add_argument("--smoothing", type=float, default=0.0)
    p.add_argument("--zip_mode", type=bool_flag, default=False, help="not supported: use an image folder")
    p.add_argument("--tsv_mode", type=bool_flag, default=False, help="not supported: use an image folder")
    p.add_argument("--sampler", default="distributed", type=str, help="distributed (the only one ssvit has)")
    p.add_argument("--pretrained_weights_ckpt", default="", type=str,
                   help="start from this full checkpoint (weights, optimizer, epoch) unless output_dir has one")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of --cfg")
    # drop_path_rate None = the architecture's own (EsViT: 0.1 for ViT students, the YAML's otherwise)
    p.set_defaults(local_crops_number=[8], local_crops_size=[96], saveckp_freq=5, drop_path_rate=None)


class DataAugmentationEsViT(DataAugmentationDINO):
    """EsViT's ``dino_aug``: DINO's multi-crop with one group of local crops per size
    (``local_crops_number[i]`` crops of ``local_crops_size[i]`` px, groups in order)."""

    def __init__(self, global_crops_scale, local_crops_scale, local_crops_number: Sequence[int],
                 global_crops_size: int = 224, local_crops_size: Sequence[int] = (96,)):
        super().__init__(global_crops_scale, local_crops_scale, 0, global_crops_size, local_crops_size[0])
        self.local_groups = [(n, self.local_transform(size)) for n, size in zip(local_crops_number, local_crops_size)]

    def __call__(self, image):
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        for n, tf in self.local_groups:
            crops.extend(tf(image) for _ in range(n))
        return crops


class DataAugmentationDeiT:
    """EsViT's ``deit_aug``: timm's DeiT training transform (RandAugment, colour jitter, random
    erasing) for both global crops and the local crops (the original hard-codes 224 / 96 px and
    iterates ``range(local_crops_number)`` over a list, which fails: here the sizes are the crop
    flags and the count is ``sum(local_crops_number)``)."""

    def __init__(self, args):
        from timm.data import create_transform

        def tf(size):
            return create_transform(input_size=size, is_training=True, color_jitter=args.color_jitter,
                                    auto_augment=args.aa, interpolation=args.train_interpolation,
                                    re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
        self.global_transfo1 = tf(args.global_crops_size)
        self.global_transfo2 = tf(args.global_crops_size)
        self.local_crops_number = sum(args.local_crops_number)
        self.local_transfo = tf(args.local_crops_size[0])

    def __call__(self, image):
        if image.mode != "RGB":
            image = image.convert("RGB")  # timm's colour ops need RGB
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops.extend(self.local_transfo(image) for _ in range(self.local_crops_number))
        return crops


class EsViT(DINOFamily):
    name = "esvit"
    loss_key = "dino_loss"

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.use_dense = bool(args.use_dense_prediction)
        student, teacher = self.build_backbones(args)
        dim = student.num_features
        head_kw = dict(nlayers=args.head_nlayers, hidden_dim=args.head_hidden_dim,
                       bottleneck_dim=args.head_bottleneck_dim)

        def heads(student_side: bool):
            kw = dict(use_bn=args.use_bn_in_head, **head_kw)
            if student_side:
                kw["norm_last_layer"] = args.norm_last_layer
            return DINOHead(dim, args.out_dim, **kw), (DINOHead(dim, args.out_dim, **kw) if self.use_dense else None)

        self.student = EsViTWrapper(student, *heads(True), use_dense_prediction=self.use_dense)
        self.teacher = EsViTWrapper(teacher, *heads(False), use_dense_prediction=self.use_dense)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        ncrops = sum(args.local_crops_number) + 2
        loss_cls = DDINOLoss if self.use_dense else DINOLoss
        self.criterion = loss_cls(args.out_dim, ncrops, args.warmup_teacher_temp, args.teacher_temp,
                                  args.warmup_teacher_temp_epochs, args.epochs)
        self.mixup_fn = None
        if args.use_mixup and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
            from timm.data import Mixup
            self.mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                                  prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                                  label_smoothing=args.smoothing, num_classes=args.batch_size_per_gpu)
        self.num_mixup_views = args.num_mixup_views

    @staticmethod
    def build_backbones(args) -> tuple[nn.Module, nn.Module]:
        kwargs: dict = dict(img_size=args.global_crops_size)
        if is_multistage(args.arch):
            if args.cfg:
                kwargs.update(backbone_kwargs_from_cfg(args.arch, load_esvit_config(args.cfg, args.opts)))
        else:
            # EsViT's ViT: hard-coded student drop path 0.1, no +0.1 in the pos-embed resampling
            kwargs.update(patch_size=args.patch_size, pos_embed_rule="esvit", drop_path_rate=0.1)
        if args.drop_path_rate is not None:
            kwargs["drop_path_rate"] = args.drop_path_rate
        student = create_backbone(args.arch, **kwargs)
        teacher = create_backbone(args.arch, **{**kwargs, "drop_path_rate": 0.0})
        return student, teacher

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_esvit_args(parser)

    @classmethod
    def check_args(cls, args):
        args.local_crops_number = _as_list(args.local_crops_number)
        args.local_crops_size = _as_list(args.local_crops_size)
        check_self_distillation_args(args, patch_rule=not is_multistage(args.arch))
        if args.out_dim < 1:
            raise ValueError(f"--out_dim must be positive, got {args.out_dim}")
        if any(n < 0 for n in args.local_crops_number):
            raise ValueError(f"--local_crops_number must be >= 0, got {args.local_crops_number}")
        if len(args.local_crops_number) != len(args.local_crops_size):
            raise ValueError(f"--local_crops_number {args.local_crops_number} and --local_crops_size "
                             f"{args.local_crops_size} need one count per size")
        sizes_used = {s for n, s in zip(args.local_crops_number, args.local_crops_size) if n > 0}
        if args.use_dense_prediction and len(sizes_used) > 1:
            raise ValueError("--use_dense_prediction true supports a single --local_crops_size (EsViT's DDINOLoss "
                             f"splits the region tokens by one local size), got {args.local_crops_size}")
        if args.use_dense_prediction and sizes_used == {args.global_crops_size}:
            raise ValueError("--use_dense_prediction true needs local crops smaller than the global crops")
        if args.aug_opt not in AUG_OPTS:
            raise ValueError(f"--aug-opt must be one of {', '.join(AUG_OPTS)} (EsViT lists mocov2_aug and basic_aug "
                             f"in its help but builds no transform for them), got {args.aug_opt!r}")
        if args.aug_opt == "deit_aug" and len(set(args.local_crops_size)) > 1:
            raise ValueError("--aug-opt deit_aug takes a single --local_crops_size")
        if args.zip_mode or args.tsv_mode:
            raise ValueError("--zip_mode / --tsv_mode read Microsoft's packed ImageNet files, which ssvit does not "
                             "support: unpack to an image folder and use --data_path")
        if args.sampler != "distributed":
            raise ValueError(f"--sampler {args.sampler!r}: only 'distributed' is available")
        if args.use_mixup and args.batch_size_per_gpu % 2:
            raise ValueError("--use_mixup needs an even --batch_size_per_gpu (timm Mixup)")
        if args.opts and not args.cfg:
            raise ValueError(f"KEY VALUE overrides {args.opts} need --cfg")
        if args.opts and len(args.opts) % 2:
            raise ValueError(f"overrides must come as KEY VALUE pairs, got {args.opts}")
        if args.cfg and not is_multistage(args.arch):
            raise ValueError("--cfg configures Swin / CvT / ViL backbones; ViT sizes come from --arch")

    def build_transform(self, args):
        if args.aug_opt == "deit_aug":
            return DataAugmentationDeiT(args)
        return DataAugmentationEsViT(args.global_crops_scale, args.local_crops_scale, args.local_crops_number,
                                     args.global_crops_size, args.local_crops_size)

    def mix_student_views(self, images: list[torch.Tensor]) -> tuple[list[torch.Tensor], Optional[list]]:
        """EsViT's mixup: the first ``num_mixup_views`` crops are mixed (image-index targets,
        ``num_classes = batch``), the others get identity targets; the teacher sees clean crops."""
        if self.mixup_fn is None:
            return images, None
        out, targets = [], []
        for v, samples in enumerate(images):
            b = samples.shape[0]
            if v < self.num_mixup_views:
                # timm mixes in place: in the original the teacher's global crops (same tensors)
                # end up mixed too; the spec says the teacher input is never mixed -> mix a copy
                samples, t = self.mixup_fn(samples.clone(), torch.arange(b, device=samples.device))
            else:
                t = torch.eye(b, device=samples.device)
            out.append(samples)
            targets.append(t)
        return out, targets

    def resume_source(self, args, output_dir):
        path = super().resume_source(args, output_dir)
        if path is None and args.pretrained_weights_ckpt:  # EsViT: start from another run's checkpoint
            if not os.path.isfile(args.pretrained_weights_ckpt):
                from ..utils.checkpoint import CheckpointError
                raise CheckpointError(f"--pretrained_weights_ckpt: '{args.pretrained_weights_ckpt}' does not exist")
            return args.pretrained_weights_ckpt
        return path

    def training_step(self, student, images, epoch, it=0, labels=None, index=None):
        teacher_output = self.teacher(images[:2])  # only the 2 global views pass through the teacher
        student_input, targets = self.mix_student_views(list(images))
        student_output = student(student_input)
        self.observe_teacher(teacher_output[0] if isinstance(teacher_output, (tuple, list)) else teacher_output, epoch)
        loss = self.criterion(student_output, teacher_output, epoch, targets)
        return loss, {}
