"""Supervised finetuning of any ssvit backbone on the shared engine (``main_finetune.py``).

The recipe of MAE's ``main_finetune.py`` (He et al. 2022; DeiT's augmentation): timm's
RandAugment (``--aa``), random erasing (``--reprob --remode --recount``), mixup / cutmix
(``--mixup --cutmix --cutmix_minmax --mixup_prob --mixup_switch_prob --mixup_mode``) with label
smoothing (``--smoothing``), layer-wise lr decay (``--layer_decay``), drop path, warm-up + cosine,
global-norm clipping (``--clip_grad``), optional weight EMA (``--model_ema``), top-1 / top-5 on the
validation split every ``--val_freq`` epochs, ``checkpoint_best.pth``.

Model: ``FinetuneModel(backbone, head)`` -- the backbone as ssvit builds it (ViT: by default MAE's
``--global_pool``, ``fc_norm`` of the mean patch token with the final norm dropped; ``--cls_token``:
the CLS token after the final norm, DINO's convention; Swin / CvT / ViL: their pooled features;
``--dist_eval``: each rank validates its share) and ``head`` a Linear
(weight trunc-normal std 2e-5, bias 0, as MAE). ``--finetune CKPT`` loads the backbone from an
ssvit / DINO / iBOT / EsViT / MAE checkpoint (``--checkpoint_key``, projection heads dropped,
position embeddings interpolated to ``--input_size``).

Layer-wise lr decay (MAE/BEiT ``param_groups_lrd``, see ``layer_ids``): ViT ``cls_token`` /
``pos_embed`` / ``patch_embed`` are layer 0, ``blocks.i`` layer i+1, the final norm and the head
layer depth+1; each layer's lr is scaled by ``layer_decay ** (depth + 1 - layer)``. Multi-stage
backbones (Swin, CvT, ViL) number their blocks in order over the stages; a stage's patch merging /
embedding takes the layer of the block before it (SimMIM's Swin rule). Biases, norms and the
no-weight-decay tokens get no weight decay.
"""
from __future__ import annotations

import argparse
import os
import re
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import bool_flag
from ..models import create_backbone
from ..models.backbone import is_token_model
from ..engine.schedules import linear_scaled_cosine
from ..engine.task import ClipPolicy, TrainingTask
from .weight_ema import WeightEMA


class FinetuneModel(nn.Module):
    """backbone (B, C, H, W) -> features (B, D) -> head -> logits (B, num_classes).

    ``global_pool`` (MAE's default, ViTs only): the feature is ``fc_norm`` (a new LayerNorm, eps 1e-6)
    of the mean of the last block's patch tokens, and the backbone's final ``norm`` is dropped (MAE
    deletes it; call after loading the pretrained weights). Without it (``--cls_token``): the CLS token
    after the final norm. Swin / CvT / ViL always use their own pooled feature."""

    def __init__(self, backbone: nn.Module, num_classes: int, global_pool: bool = False):
        super().__init__()
        self.backbone = backbone
        dim = int(getattr(backbone, "num_features", None) or backbone.embed_dim)
        self.global_pool = bool(global_pool) and is_token_model(backbone)
        if self.global_pool:
            backbone.norm = nn.Identity()
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D): the input of the classifier head."""
        if self.global_pool:
            tokens = self.backbone.forward_blocks(x)
            return self.fc_norm(tokens[:, getattr(self.backbone, "num_prefix_tokens", 1):].mean(dim=1))
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def add_finetune_args(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("finetuning (MAE main_finetune.py names)")
    p.add_argument("--nb_classes", default=1000, type=int, help="number of the classification types")
    p.add_argument("--finetune", default="", help="backbone checkpoint to finetune from (ssvit/DINO/iBOT/EsViT/MAE)")
    p.add_argument("--checkpoint_key", default="teacher", help="network of a training checkpoint (teacher/student)")
    p.add_argument("--input_size", default=224, type=int, help="images input size")
    p.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise lr decay from ELECTRA/BEiT")
    p.add_argument("--color_jitter", default=None, type=float, help="color jitter factor (enabled only when not using Auto/RandAug)")
    p.add_argument("--aa", default="rand-m9-mstd0.5-inc1", type=str, help="AutoAugment policy ('' or none: off)")
    p.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    p.add_argument("--reprob", default=0.25, type=float, help="random erase prob")
    p.add_argument("--remode", default="pixel", type=str, help="random erase mode")
    p.add_argument("--recount", default=1, type=int, help="random erase count")
    p.add_argument("--mixup", default=0.8, type=float, help="mixup alpha, mixup enabled if > 0")
    p.add_argument("--cutmix", default=1.0, type=float, help="cutmix alpha, cutmix enabled if > 0")
    p.add_argument("--cutmix_minmax", default=None, type=float, nargs="+", help="cutmix min/max ratio")
    p.add_argument("--mixup_prob", default=1.0, type=float, help="probability of mixup or cutmix per batch")
    p.add_argument("--mixup_switch_prob", default=0.5, type=float, help="probability of switching to cutmix")
    p.add_argument("--mixup_mode", default="batch", type=str, help='"batch", "pair", or "elem"')
    p.add_argument("--model_ema", default=False, type=bool_flag, help="keep an EMA of the weights (validated too)")
    p.add_argument("--model_ema_decay", default=0.9999, type=float)
    p.add_argument("--eval_batch_size", default=None, type=int, help="validation batch (default: the training batch)")
    p.add_argument("--global_pool", action="store_true", help="ViT feature: fc_norm of the mean patch token (MAE)")
    p.add_argument("--cls_token", action="store_false", dest="global_pool",
                   help="Use class token instead of global pool for classification")
    p.set_defaults(global_pool=True)
    p.add_argument("--lr_sched", default="cosine", choices=["cosine", "timm_epoch"],
                   help="cosine: per-iteration warm-up + half cosine (MAE); timm_epoch: timm's per-epoch cosine "
                        "stepped after each epoch from --warmup_lr (DeiT / SiT-v1)")
    p.add_argument("--warmup_lr", default=1e-6, type=float, help="start lr of --lr_sched timm_epoch's warm-up")
    p.add_argument("--repeated_aug", default=False, type=bool_flag,
                   help="DeiT's repeated augmentation (RASampler), as SiT-v1's finetuning")
    p.add_argument("--representation_size", default=None, type=int,
                   help="SiT models: the pre-logits Linear + Tanh ('2-layer MLP') of this width")
    p.add_argument("--drop", default=0.0, type=float, help="SiT models: dropout rate")
    p.add_argument("--sit_linear_evaluation", default=False, type=bool_flag,
                   help="SiT-v1's --SiT_LinearEvaluation 1: train only the two heads (and pre-logits); the "
                        "backbone stays in train mode with the finetuning augmentations (QUIRK kept)")
    p.add_argument("--dist_eval", action="store_true", default=False,
                   help="Enabling distributed evaluation (each rank validates its share; default: every rank "
                        "validates the whole set)")
    p.add_argument("--resume", default="", help="resume from this checkpoint (default: output_dir/checkpoint.pth)")
    p.add_argument("--finetune_clip_grad", default=0.0, type=float,
                   help="clip the global gradient norm (main_finetune.py's --clip_grad); 0 = off")


# one transformer block: ViT blocks.i, Swin layers.s.blocks.j, CvT stageS.1.layers.j, ViL layerS.j (j >= 1)
_BLOCK_RE = re.compile(r"^(?:backbone\.)?(blocks\.\d+|layers\.\d+\.blocks\.\d+|stage\d+\.1\.layers\.\d+|"
                       r"layer\d+\.[1-9]\d*)\.")


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer for layer-wise decay, walking the parameters in order: the k-th
    transformer block (over all stages) is layer k; what comes before the first block (tokens,
    position embeddings, patch embedding) is layer 0; what sits between blocks (a stage's
    patch-merging / convolutional embedding) takes the layer of the block before it; what comes
    after the last block (final norm, head) is layer depth + 1. For a ViT this is MAE's
    ``get_layer_id_for_vit``; for Swin it equals SimMIM's rule (``layers.s.downsample`` ->
    ``sum(depths[:s+1])``)."""
    names = [n for n, _ in model.named_parameters()]
    keys = [(_BLOCK_RE.match(n).group(1) if _BLOCK_RE.match(n) else None) for n in names]
    blocks = list(dict.fromkeys(k for k in keys if k is not None))
    depth = len(blocks)
    last_block_at = max((i for i, k in enumerate(keys) if k is not None), default=-1)
    ids, current = {}, 0
    block_id = {k: i + 1 for i, k in enumerate(blocks)}
    for i, (n, k) in enumerate(zip(names, keys)):
        if k is not None:
            current = block_id[k]
            ids[n] = current
        else:
            ids[n] = depth + 1 if i > last_block_at else current
    return ids


def param_groups_lrd(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """MAE's ``param_groups_lrd``: one group per (layer, decay / no decay) with ``lr_scale =
    layer_decay ** (depth + 1 - layer)``; the engine multiplies the scheduled lr by it and the
    weight decay by ``wd_scale`` (0 or 1). No decay for 1-D tensors (biases, norms) and the
    backbone's no-weight-decay tokens."""
    ids = layer_ids(model)
    depth = max(ids.values()) - 1
    bb = getattr(model, "backbone", model)
    no_wd = set(getattr(bb, "no_weight_decay", lambda: set())()) | {"pos_embed", "cls_token", "dist_token"}
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = name[len("backbone."):] if name.startswith("backbone.") else name
        decay = not (p.ndim == 1 or short in no_wd or name.endswith(".bias"))
        key = (ids[name], decay)
        if key not in groups:
            groups[key] = {"params": [], "lr_scale": layer_decay ** (depth + 1 - ids[name]),
                           "wd_scale": 1.0 if decay else 0.0, "weight_decay": weight_decay if decay else 0.0,
                           "layer_id": ids[name]}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def is_sit_arch(arch: str) -> bool:
    from ..models.registry import _ALIASES
    return _ALIASES.get(arch, arch).startswith("sit_")


def build_sit_finetune_model(args) -> nn.Module:
    """SiT-v1's finetuning model (``training_mode='finetune'``: two heads, ``forward`` -> both logits),
    loaded as the original: the checkpoint's ``model`` (or an ssvit ``student``), heads of another
    shape dropped, ``pos_embed`` resized keeping the two extra tokens, the rest required. With
    ``--sit_linear_evaluation`` only the heads (and pre-logits) train."""
    model = create_backbone(args.arch, patch_size=args.patch_size, img_size=args.input_size,
                            training_mode="finetune", num_classes=args.nb_classes, drop_rate=args.drop,
                            drop_path_rate=args.drop_path_rate, representation_size=args.representation_size)
    if args.finetune:
        from ..utils.checkpoint import CheckpointError, load_checkpoint, strip_prefixes
        ck = load_checkpoint(args.finetune)
        sd = next((ck[k] for k in ("model", args.checkpoint_key, "student") if isinstance(ck.get(k), dict)), ck)
        sd = model.checkpoint_filter(strip_prefixes(sd, ("module.",)))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        trainable_new = ("rot_head.", "contrastive_head.", "pre_logits_")
        bad = [k for k in missing if not k.startswith(trainable_new)]
        if bad or unexpected:
            raise CheckpointError(f"'{args.finetune}' does not fit {args.arch}: missing {bad[:8]}, unexpected "
                                  f"{list(unexpected)[:8]}")
        print(f"Finetuning from {args.finetune} (SiT layout)")
    if args.sit_linear_evaluation:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(("rot_head.", "contrastive_head.", "pre_logits_rot.fc.",
                                               "pre_logits_contrastive.fc."))
    return model


def _clamp_posterize_bits() -> None:
    """timm's ``PosterizeIncreasing`` (in MAE's ``rand-m9-mstd0.5-inc1``) keeps ``4 - 4 * level``
    bits: 0 at the top magnitude, which Pillow >= 10 rejects ("bits must be between or equal to 1
    and 8"; older Pillow blacked the image out). Keep at least 1 bit (documented deviation)."""
    from timm.data import auto_augment as aa
    base = aa._posterize_increasing_level_to_arg
    if getattr(base, "_ssvit_clamped", False):
        return

    def clamped(level, hparams):
        return (max(1, int(base(level, hparams)[0])),)
    clamped._ssvit_clamped = True
    aa.LEVEL_TO_ARG["PosterizeIncreasing"] = clamped
    aa._posterize_increasing_level_to_arg = clamped


def build_finetune_transform(args, is_train: bool):
    """timm's ``create_transform`` with MAE's settings (bicubic, ImageNet statistics); eval: resize by
    256/224 (to the crop for inputs <= 32 px), centre crop. Grey images become 3-channel."""
    from timm.data import create_transform
    from torchvision import transforms

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    rgb = transforms.Lambda(lambda im: im.convert("RGB"))
    if is_train:
        _clamp_posterize_bits()
        aa = None if (args.aa or "").lower() in ("", "none") else args.aa
        tf = create_transform(input_size=args.input_size, is_training=True, color_jitter=args.color_jitter,
                              auto_augment=aa, interpolation="bicubic", re_prob=args.reprob, re_mode=args.remode,
                              re_count=args.recount, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return transforms.Compose([rgb, tf])
    size = args.input_size if args.input_size <= 32 else int(round(args.input_size * 256 / 224))
    return transforms.Compose([
        rgb, transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(args.input_size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class Finetune(WeightEMA, TrainingTask):
    name = "finetune"
    has_ema_teacher = False
    loss_key = "criterion"
    best_metric = "acc1"

    @classmethod
    def add_args(cls, parser):
        add_finetune_args(parser)

    @classmethod
    def check_args(cls, args):
        if args.nb_classes < 2:
            raise ValueError(f"--nb_classes must be >= 2, got {args.nb_classes}")
        if not 0 < args.layer_decay <= 1:
            raise ValueError(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
        if args.finetune and not os.path.isfile(args.finetune):
            from ..utils.checkpoint import CheckpointError
            raise CheckpointError(f"--finetune: '{args.finetune}' does not exist")
        if args.mixup_mode not in ("batch", "pair", "elem"):
            raise ValueError(f"--mixup_mode must be batch, pair or elem, got {args.mixup_mode!r}")

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        if is_sit_arch(args.arch):
            self.student = build_sit_finetune_model(args)
        else:
            if args.sit_linear_evaluation or args.representation_size:
                raise ValueError("--sit_linear_evaluation and --representation_size apply to SiT models (sit_*)")
            backbone = create_backbone(args.arch, patch_size=args.patch_size, drop_path_rate=args.drop_path_rate,
                                       img_size=args.input_size)
            if args.finetune:
                from ..models.loading import load_backbone_state, read_pretrained_state
                load_backbone_state(backbone, read_pretrained_state(args.finetune, args.checkpoint_key), args.arch)
                print(f"Finetuning from {args.finetune} (key '{args.checkpoint_key}')")
            self.student = FinetuneModel(backbone, args.nb_classes, global_pool=args.global_pool)
        self.teacher = None
        self.criterion = nn.Module()  # stateless; the loss is chosen below
        self.mixup_fn = None
        if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
            from timm.data import Mixup
            self.mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                                  prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                                  label_smoothing=args.smoothing, num_classes=args.nb_classes)
        self.init_weight_ema(args.model_ema)
        self._val_loader = None

    # ---- data and loss
    def dataset_path(self, args):
        from ..data import split_root
        return split_root(args.dataset, args.data_path, "train")

    def resume_source(self, args, output_dir):
        if args.resume:  # MAE's --resume FILE
            if not os.path.isfile(args.resume):
                from ..utils.checkpoint import CheckpointError
                raise CheckpointError(f"--resume: '{args.resume}' does not exist")
            return args.resume
        return super().resume_source(args, output_dir)

    def build_transform(self, args):
        return build_finetune_transform(args, is_train=True)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mixup_fn is not None:  # soft targets (mixed, smoothed): timm's SoftTargetCrossEntropy
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, targets, label_smoothing=self.args.smoothing)

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        if labels is None:
            raise ValueError("finetuning needs the labels")
        images, targets = batch, labels
        if self.mixup_fn is not None:
            if images.shape[0] % 2:
                raise ValueError("mixup needs an even batch size (timm's Mixup)")
            images, targets = self.mixup_fn(images, targets)
        out = student(images)
        if isinstance(out, tuple):  # SiT: the rotation-token and contrastive-token heads, both supervised
            return self.loss(out[0], targets) + self.loss(out[1], targets), {}
        return self.loss(out, targets), {}

    def build_sampler(self, dataset, num_replicas, rank, seed):
        if not self.args.repeated_aug:
            return None
        from ..data import repeated_aug_sampler
        return repeated_aug_sampler(dataset, num_replicas, rank, "--repeated_aug")

    def schedules(self, args, niter_per_ep, bs_total):
        if args.lr_sched != "timm_epoch":  # MAE's: per-iteration warm-up + half cosine, lr x batch / 256
            return linear_scaled_cosine(args, niter_per_ep, bs_total)
        from ..objectives.schedules import timm_epoch_schedules
        return timm_epoch_schedules(args.lr * bs_total / 256.0, args.epochs, args.warmup_lr, args.warmup_epochs,
                                    args.min_lr, args.weight_decay, niter_per_ep)

    def param_groups(self, student):
        return param_groups_lrd(self.student, self.args.weight_decay, self.args.layer_decay)

    def clip_policy(self, args):
        if args.finetune_clip_grad:  # MAE clips the global norm (the engine's --clip_grad is per parameter)
            return ClipPolicy("global_norm", float(args.finetune_clip_grad))
        return super().clip_policy(args)

    # ---- validation
    def val_loader(self):
        if self._val_loader is None:
            from ..engine.validation import validation_loader
            a = self.args
            self._val_loader, self._val_size = validation_loader(
                a, build_finetune_transform(a, is_train=False), a.eval_batch_size or a.batch_size_per_gpu,
                shard=a.dist_eval)
        return self._val_loader

    def evaluate(self, model: nn.Module) -> dict:
        """DeiT / MAE ``evaluate``: loss, top-1, top-5 (``--dist_eval``: over every rank's shard)."""
        from ..engine.validation import weighted_mean
        from ..utils.metrics import accuracy

        def batch_metrics(model, item, device):
            images, target = (t.to(device) for t in item)
            out = model(images)
            if isinstance(out, tuple):  # SiT's evaluate_finetune: mean of the two heads, sum of their losses
                loss = F.cross_entropy(out[0], target) + F.cross_entropy(out[1], target)
                out = (out[0] + out[1]) / 2
            else:
                loss = F.cross_entropy(out, target)
            a1, a5 = accuracy(out, target, topk=(1, min(5, out.shape[1])))
            return images.shape[0], {"loss": loss.item(), "acc1": a1.item(), "acc5": a5.item()}
        return weighted_mean(model, self.val_loader(), batch_metrics, all_reduce=bool(self.args.dist_eval),
                             keys=("loss", "acc1", "acc5"))

    def validate(self, epoch):
        stats = self.evaluate(self.student)
        print(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}")
        print(f"Accuracy of the network on the {self._val_size} test images: {stats['acc1']:.1f}%")
        if self.ema is not None:
            ema = self.evaluate(self.ema)
            stats.update({f"ema_{k}": v for k, v in ema.items()})
            print(f"Accuracy of the EMA model: {ema['acc1']:.1f}%")
        return stats

