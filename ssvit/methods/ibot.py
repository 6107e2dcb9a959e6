"""iBOT (Zhou et al., ICLR 2022): DINO's CLS self-distillation + masked image modelling with the
teacher as online tokenizer (bytedance/ibot ``main_ibot.py``).

Student = MultiCropWrapper(ViT with ``masked_embed``, iBOTHead), teacher = the same without mask
token and with ``shared_head_teacher``; the teacher sees the unmasked global crops, the student
the masked global crops and (separately, unmasked) the local crops.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn as nn

from ..config import bool_flag
from ..data.masking import MaskedCrops, MaskGenerator
from ..data.transforms import DataAugmentationiBOT
from ..models import MultiCropWrapper, create_backbone
from ..models.esvit_config import is_multistage
from ..models.ibot_head import iBOTHead
from ..objectives import iBOTLoss
from .dino_family import DINOFamily, add_koleo_args, check_koleo_args, check_self_distillation_args


def add_ibot_args(parser: argparse.ArgumentParser) -> None:
    """main_ibot.py's flags that main_dino.py lacks, and its different defaults."""
    p = parser
    p.add_argument("--window_size", default=7, type=int,
                   help="main_ibot.py's Swin window size: accepted for its command lines, unused (ViTs only here)")
    p.add_argument("--patch_out_dim", default=8192, type=int)
    p.add_argument("--shared_head", default=False, type=bool_flag)
    p.add_argument("--shared_head_teacher", default=True, type=bool_flag)
    p.add_argument("--norm_in_head", default=None, help="None, bn, syncbn, csyncbn, psyncbn or ln")
    p.add_argument("--act_in_head", default="gelu", choices=["gelu", "relu"])
    p.add_argument("--use_masked_im_modeling", default=True, type=bool_flag)
    p.add_argument("--pred_ratio", default=0.3, type=float, nargs="+")
    p.add_argument("--pred_ratio_var", default=0, type=float, nargs="+")
    p.add_argument("--pred_shape", default="block", type=str, choices=["block", "rand"])
    p.add_argument("--pred_start_epoch", default=0, type=int)
    p.add_argument("--lambda1", default=1.0, type=float, help="weight of the CLS (DINO) loss")
    p.add_argument("--lambda2", default=1.0, type=float, help="weight of the masked patch loss")
    p.add_argument("--warmup_teacher_patch_temp", default=0.04, type=float)
    p.add_argument("--teacher_patch_temp", default=0.07, type=float)
    p.add_argument("--global_crops_number", default=2, type=int)
    p.add_argument("--load_from", default=None, help="resume from output_dir/LOAD_FROM instead of checkpoint.pth")
    p.add_argument("--drop_path", dest="drop_path_rate", type=float, default=argparse.SUPPRESS,
                   help="student drop-path rate (iBOT's name for --drop_path_rate; default 0.1)")
    p.set_defaults(out_dim=8192, warmup_teacher_temp_epochs=30, batch_size_per_gpu=128,
                   global_crops_scale=(0.14, 1.0), local_crops_number=0, saveckp_freq=40)


def check_ibot_args(args: argparse.Namespace) -> None:
    if args.out_dim < 1 or args.patch_out_dim < 1:
        raise ValueError("--out_dim and --patch_out_dim must be positive")
    if args.global_crops_number < 1 or args.local_crops_number < 0:
        raise ValueError("--global_crops_number must be >= 1 and --local_crops_number >= 0")
    if args.shared_head_teacher and not args.shared_head and args.patch_out_dim != args.out_dim:
        raise ValueError("with --shared_head_teacher true the teacher's patch logits have --out_dim entries: "
                         "set --patch_out_dim equal to --out_dim (or --shared_head_teacher false)")
    if args.norm_in_head in ("None", "none", ""):
        args.norm_in_head = None
    if args.pred_start_epoch < 0:
        raise ValueError("--pred_start_epoch must be >= 0")
    if args.pred_start_epoch and args.pred_start_epoch + args.warmup_teacher_temp_epochs > args.epochs:
        raise ValueError(f"--pred_start_epoch ({args.pred_start_epoch}) + --warmup_teacher_temp_epochs "
                         f"({args.warmup_teacher_temp_epochs}) exceeds --epochs ({args.epochs})")
    MaskGenerator(args.pred_ratio, args.pred_ratio_var, pred_shape=args.pred_shape)  # validates the ratios


class iBOT(DINOFamily):
    name = "ibot"
    loss_key = "ibot_loss"

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.global_crops_number = args.global_crops_number
        self.local_crops_number = args.local_crops_number
        student_bb, teacher_bb = self.build_backbones(args)
        embed_dim = student_bb.embed_dim
        head_kw = dict(patch_out_dim=args.patch_out_dim, norm=args.norm_in_head, act=args.act_in_head,
                       nlayers=args.head_nlayers, hidden_dim=args.head_hidden_dim,
                       bottleneck_dim=args.head_bottleneck_dim)
        self.student = self.wrap(student_bb, iBOTHead(embed_dim, args.out_dim, norm_last_layer=args.norm_last_layer,
                                                       shared_head=args.shared_head, **head_kw), args)
        self.teacher = self.wrap(teacher_bb, iBOTHead(embed_dim, args.out_dim, shared_head=args.shared_head_teacher,
                                                       **head_kw), args)
        # strict=False: the student's masked_embed (and, QUIRK with a shared teacher head, its
        # last_layer2 overwriting last_layer) as the original
        self.teacher.load_state_dict(self.student.state_dict(), strict=False)
        for p in self.teacher.parameters():
            p.requires_grad = False
        same_dim = args.shared_head or args.shared_head_teacher
        self.criterion = iBOTLoss(
            args.out_dim, args.out_dim if same_dim else args.patch_out_dim, args.global_crops_number,
            args.local_crops_number, args.warmup_teacher_temp, args.teacher_temp, args.warmup_teacher_patch_temp,
            args.teacher_patch_temp, args.warmup_teacher_temp_epochs, args.epochs, lambda1=args.lambda1,
            lambda2=args.lambda2, mim_start_epoch=args.pred_start_epoch, **self.loss_extra_kwargs(args))

    # hooks for SERE
    def build_backbones(self, args) -> tuple[nn.Module, nn.Module]:
        kw = dict(patch_size=args.patch_size, img_size=args.global_crops_size, return_all_tokens=True)
        student = create_backbone(args.arch, drop_path_rate=args.drop_path_rate,
                                  masked_im_modeling=args.use_masked_im_modeling, **kw)
        teacher = create_backbone(args.arch, drop_path_rate=0.0, **kw)
        return student, teacher

    def wrap(self, backbone: nn.Module, head: nn.Module, args) -> nn.Module:
        return MultiCropWrapper(backbone, head)

    def loss_extra_kwargs(self, args) -> dict:
        # with --accum_iter > 1 the centers move once per optimizer step (SERE's rule)
        return dict(accum_iter=args.accum_iter)

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_ibot_args(parser)
        add_koleo_args(parser)

    @classmethod
    def check_args(cls, args):
        # the Swin / CvT / ViL backbones here have no mask token; ResNets and XCiT have no patch tokens to mask
        if is_multistage(args.arch) or args.arch.startswith(("resnet", "xcit")):
            raise ValueError(f"--method {args.method} masks ViT patch tokens: --arch {args.arch} takes no patch masks "
                             "in ssvit (use a vit_* / deit_* arch, or --method esvit for Swin / CvT / ViL)")
        check_self_distillation_args(args)
        check_ibot_args(args)
        check_koleo_args(args)

    def numbered_checkpoint(self, epoch, saveckp_freq):
        return epoch > 0 and super().numbered_checkpoint(epoch, saveckp_freq)  # iBOT / SERE: not at epoch 0

    def resume_source(self, args, output_dir):
        if args.load_from:  # iBOT's --load_from: resume from output_dir/LOAD_FROM
            path = os.path.join(output_dir, args.load_from)
            if not os.path.isfile(path):
                from ..utils.checkpoint import CheckpointError
                raise CheckpointError(f"--load_from: '{path}' does not exist")
            return path
        return super().resume_source(args, output_dir)

    def crop_transform(self, args):
        return DataAugmentationiBOT(args.global_crops_scale, args.local_crops_scale, args.global_crops_number,
                                    args.local_crops_number, args.global_crops_size, args.local_crops_size)

    def build_transform(self, args):
        gen = MaskGenerator(args.pred_ratio, args.pred_ratio_var, pred_aspect_ratio=(0.3, 1 / 0.3),
                            pred_shape=args.pred_shape, pred_start_epoch=args.pred_start_epoch)
        return MaskedCrops(self.crop_transform(args), gen, args.patch_size, args.global_crops_number)

    @staticmethod
    def cls_agreement(teacher_cls: torch.Tensor, student_cls: torch.Tensor, ngcrops: int) -> float:
        """iBOT's logged ``acc``: teacher argmax on global crop 0 == student argmax on global crop 1."""
        if ngcrops < 2:
            return float("nan")
        pred1 = teacher_cls.chunk(ngcrops)[0].argmax(dim=1)
        pred2 = student_cls.chunk(ngcrops)[1].argmax(dim=1)
        return (pred1 == pred2).float().mean().item()

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        crops, masks = batch
        G = self.global_crops_number
        teacher_output = self.teacher(crops[:G])
        feats, student_output = student(crops[:G], masks=masks[:G], return_backbone_feat=True)
        # local crops: no masking (the original switches masked_im_modeling off for this call)
        student_local_cls = student(crops[G:])[0] if len(crops) > G else None
        self.observe_teacher(teacher_output[0], epoch)
        all_loss = self.criterion(student_output, teacher_output, student_local_cls, masks, epoch, it=it)
        loss = all_loss.pop("loss")
        extra = {k: v.item() for k, v in all_loss.items()}
        extra["acc"] = self.cls_agreement(teacher_output[0], student_output[0], G)
        return self.with_koleo(loss, extra, feats[:, 0], G)  # KoLeo on the masked crops' CLS, as DINOv2
