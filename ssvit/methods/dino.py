"""DINO (Caron et al., ICCV 2021): self-distillation with no labels, view-level.

Student = MultiCropWrapper(ViT, DINOHead(norm_last_layer)), teacher = the same with drop-path 0,
initialised from the student; the teacher sees the 2 global crops, the student all crops.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from ..data.batched_multicrop import BatchedMultiCrop, image_to_uint8_tensor
from ..data.clean_view import BatchedWithCleanView, WithCleanView
from ..data.transforms import DataAugmentationDINO
from ..models import DINOHead, MultiCropWrapper, create_backbone
from ..objectives import DINOLoss
from ..objectives.dino_loss import CENTERINGS
from .dino_family import DINOFamily, add_koleo_args, check_koleo_args, check_self_distillation_args


def build_backbone(args: argparse.Namespace, drop_path_rate: float) -> nn.Module:
    return create_backbone(args.arch, patch_size=args.patch_size, drop_path_rate=drop_path_rate,
                           img_size=args.global_crops_size)


class DINO(DINOFamily):
    name = "dino"
    loss_key = "dino_loss"

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        student, teacher = self.build_backbones(args)
        embed_dim = student.embed_dim
        head_kw = dict(nlayers=args.head_nlayers, hidden_dim=args.head_hidden_dim,
                       bottleneck_dim=args.head_bottleneck_dim)
        self.student = self.wrap(student, DINOHead(
            embed_dim, args.out_dim, use_bn=args.use_bn_in_head, norm_last_layer=args.norm_last_layer, **head_kw),
            args)
        self.teacher = self.wrap(teacher, DINOHead(embed_dim, args.out_dim, args.use_bn_in_head, **head_kw), args)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.teacher_views = args.teacher_views
        self.criterion = DINOLoss(args.out_dim, args.local_crops_number + 2, args.warmup_teacher_temp,
                                  args.teacher_temp, args.warmup_teacher_temp_epochs, args.epochs,
                                  centering=args.centering)

    # hooks (SERE adds its relation heads and wrapper through them)
    def build_backbones(self, args) -> tuple[nn.Module, nn.Module]:
        return build_backbone(args, args.drop_path_rate), build_backbone(args, 0.0)

    def wrap(self, backbone: nn.Module, head: nn.Module, args) -> nn.Module:
        return MultiCropWrapper(backbone, head)

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        parser.add_argument("--centering", default="centering", choices=list(CENTERINGS),
                            help="teacher targets: centering = DINO's softmax((t - EMA centre) / temp); "
                                 "sinkhorn_knopp = DINOv2's balanced assignment (3 Sinkhorn-Knopp iterations)")
        add_koleo_args(parser)
        parser.add_argument("--teacher_views", default="crops", choices=["crops", "clean"],
                            help="what the teacher sees: crops = DINO's 2 global crops; clean = the image as "
                                 "evaluation sees it (resized and centre-cropped to --global_crops_size, no "
                                 "augmentation), one teacher output standing for both global crops' targets "
                                 "(an asymmetric teacher; --method dino only)")

    @classmethod
    def check_args(cls, args):
        check_self_distillation_args(args)
        if args.out_dim < 1:
            raise ValueError(f"--out_dim must be positive, got {args.out_dim}")
        if args.local_crops_number < 0:
            raise ValueError(f"--local_crops_number must be >= 0, got {args.local_crops_number}")
        check_koleo_args(args)

    def build_transform(self, args):
        if args.augmentation == "batched":  # crops made per batch on the device (build_batch_transform)
            return image_to_uint8_tensor
        transform = DataAugmentationDINO(args.global_crops_scale, args.local_crops_scale, args.local_crops_number,
                                         args.global_crops_size, args.local_crops_size)
        return WithCleanView(transform, args.global_crops_size) if args.teacher_views == "clean" else transform

    def build_batch_transform(self, args):
        if args.augmentation != "batched":
            return None
        transform = BatchedMultiCrop(args.global_crops_scale, args.local_crops_scale, args.local_crops_number,
                                     args.global_crops_size, args.local_crops_size)
        return BatchedWithCleanView(transform, args.global_crops_size) if args.teacher_views == "clean" else transform

    def teacher_targets(self, images):
        """(the teacher's output for the 2 global-crop slots of the loss, the student's crops)."""
        if self.teacher_views == "clean":  # the transforms appended the clean view to the crops
            *crops, clean = images
            t = self.teacher(clean)
            return torch.cat([t, t]), crops
        return self.teacher(images[:2]), images  # only the 2 global views pass through the teacher

    def training_step(self, student, images, epoch, it=0, labels=None, index=None):
        teacher_output, images = self.teacher_targets(images)
        feats, student_output = student(images, return_backbone_feat=True)
        self.observe_teacher(teacher_output, epoch)
        dino = self.criterion(student_output, teacher_output, epoch)
        return self.with_koleo(dino, {}, feats[:2 * images[0].shape[0]], 2)
