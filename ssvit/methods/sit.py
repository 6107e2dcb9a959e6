"""SiT-v1 (Atito et al. 2021; Sara-Ahmed/SiT at 1aacd6a) on the shared engine: ``--method sit``.

One ViT (``VisionTransformer_SiT``, no EMA teacher) is trained on two independent views of each
image, each rotated by ``RandomRotation`` and corrupted per batch by ``distortImages``; the loss
(``MTL_loss``) adds rotation prediction, NT-Xent between the two views' contrastive embeddings and
L1 reconstruction of the clean views, each weighted by a learned uncertainty (``rot_w``,
``contrastive_w``, ``recons_w``: parameters of the model, no weight decay). The two views are
forwarded separately and the weights are taken from the first call, as the original.

Recipe as 1aacd6a's ``main.py`` in SSL mode: AdamW (timm's groups: no weight decay on 1-D tensors,
biases and ``pos_embed`` / ``rot_token`` / ``contrastive_token``), lr ``--lr x total batch / 512``,
timm's per-epoch cosine (``--warmup-lr``, ``--warmup-epochs``, ``--min-lr``; stepped after each epoch
as DeiT, so epochs 0 and 1 both run at the warm-up start value), constant weight decay, no
clipping (``--clip-grad None``), a weight EMA (``--model-ema``, decay 0.99996, kept and saved, not
used by the SSL evaluation), the loader dropping the last batch (the contrastive loss has a fixed
batch size). Transform: timm's ``create_transform`` with colour jitter 0.4 and nothing else
(``RandomCrop(size, padding=4)`` for inputs <= 32 px), drawn twice.

Differences (documented): the corruption's NumPy draws and noise come from a generator seeded by
(seed, rank, epoch, iteration) instead of the global state (exact resume); the total loss is a
scalar, not shape (1,); a box smaller than the blur kernel is padded by replication (the original
raises on such small images); the repeated-augmentation order (``--repeated-aug``, default on as
the original) is drawn with the epoch each epoch (the original's single-GPU runs never call
``set_epoch`` and reuse epoch 0's order).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn as nn

from ..models import create_backbone
from ..objectives.sit import MTL_loss, RandomRotation, distortImages
from ..engine.task import ClipPolicy, TrainingTask
from .weight_ema import WeightEMA


class SiTViews:
    """PIL image -> ``(X1, rot1, X2, rot2)``: the transform drawn twice, each view rotated (SiT's ``getItem``)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        x1, r1 = RandomRotation(self.transform(img))
        x2, r2 = RandomRotation(self.transform(img))
        return x1, r1, x2, r2


def build_sit_transform(input_size: int, is_train: bool = True, color_jitter: float = 0.4):
    """SiT-v1's ``build_transform`` in SSL mode (see the module doc); eval: resize 256/224, centre crop."""
    from timm.data import create_transform
    from torchvision import transforms

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    rgb = transforms.Lambda(lambda im: im.convert("RGB"))
    norm = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if is_train:
        tf = create_transform(input_size=input_size, is_training=True, color_jitter=color_jitter, auto_augment=None,
                              interpolation="bicubic", re_prob=0.0, re_mode="pixel", re_count=0,
                              mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if input_size <= 32:  # the original replaces the random-resized crop
            tf.transforms[0] = transforms.RandomCrop(input_size, padding=4)
        return transforms.Compose([rgb, tf])
    size = int((256 / 224) * input_size)
    return transforms.Compose([rgb, transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(input_size), *norm])


class SiT(WeightEMA, TrainingTask):
    name = "sit"
    has_ema_teacher = False
    loss_key = "criterion"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        S = argparse.SUPPRESS
        p = parser.add_argument_group("SiT-v1 (main.py at 1aacd6a; the seed's names are aliases)")
        p.add_argument("--batch-size", dest="batch_size_per_gpu", type=int, default=S, help="per-GPU batch (72)")
        p.add_argument("--min-lr", dest="min_lr", type=float, default=S, help="lower lr bound (1e-5)")
        p.add_argument("--weight-decay", dest="weight_decay", type=float, default=S, help="weight decay (0.05)")
        p.add_argument("--output", dest="output_dir", default=S, help="output directory (--output_dir)")
        p.add_argument("--validate-every", dest="val_freq", type=int, default=S, help="validation every N epochs")
        p.add_argument("--dataset_location", dest="data_path", default=S, help="dataset root (--data_path)")
        p.add_argument("--data-set", dest="dataset", default=S, type=_sit_dataset, help="CIFAR10, STL10, ...")
        p.add_argument("--clip-grad", dest="clip_grad", type=_none_or_float, default=S, help="clip norm (None)")
        p.add_argument("--model", dest="arch", default=S, help="architecture (SiT_base_patch16_224, sit_small, ...)")
        p.add_argument("--input-size", dest="input_size", type=int, default=224, help="images input size")
        p.add_argument("--drop", type=float, default=0.0, help="dropout rate")
        p.add_argument("--drop-path", dest="drop_path_rate", type=float, default=S, help="drop path rate (0.1)")
        p.add_argument("--warmup-lr", dest="warmup_lr", type=float, default=1e-6, help="warmup learning rate")
        p.add_argument("--warmup-epochs", dest="warmup_epochs", type=int, default=S, help="warm-up epochs (5)")
        p.add_argument("--color-jitter", dest="color_jitter", type=float, default=0.4, help="color jitter factor")
        p.add_argument("--model-ema", dest="model_ema", action="store_true", default=True)
        p.add_argument("--no-model-ema", dest="model_ema", action="store_false")
        p.add_argument("--model-ema-decay", dest="model_ema_decay", type=float, default=0.99996)
        p.add_argument("--repeated-aug", dest="repeated_aug", action="store_true", default=True,
                       help="DeiT's repeated augmentation (RASampler: a third of the images, each 3 times)")
        p.add_argument("--no-repeated-aug", dest="repeated_aug", action="store_false")
        # the rest of main.py's flags at 1aacd6a: SSL mode forces smoothing / erasing / mixup / cutmix / aa off,
        # the device, memory pinning and world size are the engine's; accepted with their defaults
        p.add_argument("--opt", default="adamw", help="optimizer (adamw only)")
        p.add_argument("--opt-eps", dest="opt_eps", default=1e-8, type=float, help="AdamW epsilon (1e-8)")
        p.add_argument("--opt-betas", dest="opt_betas", default=None, type=float, nargs="+", help="None: (0.9, 0.999)")
        p.add_argument("--momentum", dest="sgd_momentum", default=0.9, type=float, help="unused by AdamW")
        p.add_argument("--sched", default="cosine", help="lr schedule (cosine only)")
        p.add_argument("--lr-noise", dest="lr_noise", default=None, type=float, nargs="+", help="unused (None)")
        p.add_argument("--lr-noise-pct", dest="lr_noise_pct", default=0.67, type=float)
        p.add_argument("--lr-noise-std", dest="lr_noise_std", default=1.0, type=float)
        p.add_argument("--decay-epochs", dest="decay_epochs", default=30, type=float, help="unused by cosine")
        p.add_argument("--cooldown-epochs", dest="cooldown_epochs", default=10, type=int,
                       help="unused: the original trains --epochs epochs")
        p.add_argument("--patience-epochs", dest="patience_epochs", default=10, type=int)
        p.add_argument("--decay-rate", dest="decay_rate", default=0.1, type=float, help="unused (one cosine cycle)")
        p.add_argument("--model-ema-force-cpu", dest="model_ema_force_cpu", action="store_true", default=False)
        p.add_argument("--smoothing", default=0.1, type=float, help="forced to 0 in SSL mode")
        p.add_argument("--train-interpolation", dest="train_interpolation", default="bicubic")
        p.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="forced off in SSL mode")
        p.add_argument("--reprob", default=0.25, type=float, help="forced to 0 in SSL mode")
        p.add_argument("--remode", default="pixel")
        p.add_argument("--recount", default=1, type=int, help="forced to 0 in SSL mode")
        p.add_argument("--resplit", action="store_true", default=False)
        p.add_argument("--mixup", default=0.8, type=float, help="forced to 0 in SSL mode")
        p.add_argument("--cutmix", default=1.0, type=float, help="forced to 0 in SSL mode")
        p.add_argument("--cutmix-minmax", dest="cutmix_minmax", default=None, type=float, nargs="+")
        p.add_argument("--mixup-prob", dest="mixup_prob", default=1.0, type=float)
        p.add_argument("--mixup-switch-prob", dest="mixup_switch_prob", default=0.5, type=float)
        p.add_argument("--mixup-mode", dest="mixup_mode", default="batch")
        p.add_argument("--num_imgs_per_cat", default=None, type=int, help="not supported (None)")
        p.add_argument("--eval", action="store_true", default=False, help="only the SSL-losses evaluation")
        p.add_argument("--resume", default="", help="resume from this checkpoint (default: output_dir/checkpoint.pth)")
        p.add_argument("--finetune", default="", help="initial weights (a SiT checkpoint: 'model' or 'student')")
        p.add_argument("--dist-eval", dest="dist_eval", action="store_true", default=False)
        p.add_argument("--pin-mem", dest="pin_mem", action="store_true", default=True)
        p.add_argument("--no-pin-mem", dest="pin_mem", action="store_false")
        p.add_argument("--world_size", default=1, type=int, help="absorbed: torchrun sets it")
        p.add_argument("--start_epoch", default=0, type=int, help="absorbed: resume sets it")
        p.add_argument("--training-mode", dest="training_mode", default="SSL", choices=["SSL", "finetune"],
                       help="SSL, or finetune (run by main_finetune.py with SiT's recipe, see finetune_argv)")
        p.add_argument("--SiT_LinearEvaluation", dest="SiT_LinearEvaluation", type=int, default=0, choices=[0, 1],
                       help="with --training-mode finetune: train only the heads (SiT's linear / MLP evaluation)")
        p.add_argument("--representation-size", dest="representation_size", type=int, default=None,
                       help="pre-logits Linear + Tanh of this width (the '2-layer MLP' head)")
        parser.set_defaults(arch="sit_base", patch_size=16, epochs=501, batch_size_per_gpu=72, lr=5e-4, min_lr=1e-5,
                            warmup_epochs=5, weight_decay=0.05, weight_decay_end=0.05, clip_grad=0.0,
                            drop_path_rate=0.1, optimizer="adamw", dataset="cifar10")

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        if args.dataset == "stl10":  # SiT-v1's SSL split is train+unlabeled (validation: test)
            args.dataset = "stl10_unlabeled"
        args.validate_only = bool(args.eval)  # main.py --eval: only the SSL-losses evaluation
        if args.opt != "adamw" or args.sched != "cosine":
            raise ValueError("SiT-v1's SSL recipe is --opt adamw --sched cosine (timm's other optimisers and "
                             "schedules are not offered)")
        if args.opt_eps != 1e-8 or args.opt_betas not in (None, [0.9, 0.999]) or args.lr_noise is not None \
                or args.num_imgs_per_cat is not None:
            raise ValueError("--opt-eps / --opt-betas other than AdamW's defaults, --lr-noise and --num_imgs_per_cat "
                             "are not offered")

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        if args.training_mode == "finetune":  # ssvit pretrain redirects it from the command line only
            raise ValueError("--training-mode finetune is the finetuning task: ssvit pretrain runs it when the flag is "
                             "on the command line; a --config file's training_mode: finetune is not redirected (give "
                             "--training-mode finetune on the command line, or use main_finetune.py)")
        from ..models.registry import _ALIASES
        if not _ALIASES.get(args.arch, args.arch).startswith("sit_"):
            raise ValueError(f"--method sit trains a SiT ViT (sit_pico, sit_tiny, sit_small, sit_base / "
                             f"SiT_base_patch16_224), not '{args.arch}'")
        if args.optimizer != "adamw":
            raise ValueError("SiT-v1 trains with AdamW (timm's create_optimizer, --opt adamw)")
        if args.input_size % args.patch_size:
            raise ValueError(f"--input-size {args.input_size} must be a multiple of --patch_size {args.patch_size}")
        if args.batch_size_per_gpu < 2:
            raise ValueError("the contrastive loss needs batches of at least 2 images")

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.student = create_backbone(args.arch, patch_size=args.patch_size, img_size=args.input_size,
                                       training_mode="SSL", drop_rate=args.drop, drop_path_rate=args.drop_path_rate,
                                       representation_size=args.representation_size)
        if args.finetune:  # main.py loads --finetune into the SSL model too (heads of another shape dropped)
            from ..utils.checkpoint import load_checkpoint, strip_prefixes
            ck = load_checkpoint(args.finetune)
            sd = next((ck[k] for k in ("model", "student") if isinstance(ck.get(k), dict)), ck)
            missing, unexpected = self.student.load_state_dict(
                self.student.checkpoint_filter(strip_prefixes(sd, ("module.",))), strict=False)
            print(f"Initial weights from {args.finetune} (missing {len(missing)}, unexpected {len(unexpected)})")
        self.teacher = None
        self.criterion = MTL_loss(None, args.batch_size_per_gpu)
        self.init_weight_ema(args.model_ema)

    def build_transform(self, args):
        return SiTViews(build_sit_transform(args.input_size, True, args.color_jitter))

    def resume_source(self, args, output_dir):
        if args.resume:  # main.py's --resume FILE
            if not os.path.isfile(args.resume):
                from ..utils.checkpoint import CheckpointError
                raise CheckpointError(f"--resume: '{args.resume}' does not exist")
            return args.resume
        return super().resume_source(args, output_dir)

    def build_sampler(self, dataset, num_replicas, rank, seed):
        if not self.args.repeated_aug:
            return None
        from ..data import repeated_aug_sampler
        return repeated_aug_sampler(dataset, num_replicas, rank, "--repeated-aug", "--no-repeated-aug")

    def dataset_path(self, args):
        from ..data import split_root
        return split_root(args.dataset, args.data_path, "train")

    # ---- "SSL losses as metrics" every --validate-every epochs
    def val_loader(self):
        if getattr(self, "_val_loader", None) is None:
            from ..engine.validation import validation_loader
            a = self.args
            self._val_loader = validation_loader(a, SiTViews(build_sit_transform(a.input_size, False)),
                                                 int(1.5 * a.batch_size_per_gpu), seed=a.seed).loader
        return self._val_loader

    def validate(self, epoch):
        from ..objectives.sit_eval import evaluate_sit_losses
        from ..utils.distributed import is_main_process
        pic = os.path.join(self.args.output_dir, "reconstruction_samples", f"Test_epoch_{epoch}.png") \
            if is_main_process() else None
        device = next(self.student.parameters()).device
        stats = evaluate_sit_losses(self.student, self.val_loader(), device, seed=self.args.seed, picture_path=pic)
        print(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}  "
              f"(rotation; contrastive {stats['contrastive_loss']:.3f}, reconstruction "
              f"{stats['reconstruction_loss']:.3f})")
        return stats

    def schedules(self, args, niter_per_ep, bs_total):
        from ..objectives.schedules import timm_epoch_schedules  # lr per 512 images, as main.py
        return timm_epoch_schedules(args.lr * bs_total / 512.0, args.epochs, args.warmup_lr, args.warmup_epochs,
                                    args.min_lr, args.weight_decay, niter_per_ep)

    def clip_policy(self, args):
        """main.py's ``--clip-grad``: timm's ``NativeScaler(clip_grad=...)``, mode ``norm`` -- the global norm."""
        return ClipPolicy("global_norm", float(args.clip_grad or 0.0))

    def param_groups(self, student):
        """timm's ``add_weight_decay``: no decay for 1-D tensors, biases and ``no_weight_decay()``."""
        bare = getattr(student, "module", student)
        skip = bare.no_weight_decay()
        decay, no_decay = [], []
        for name, p in bare.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
        return [{"params": decay, "wd_scale": 1.0}, {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0}]

    def corruption_rng(self, epoch: int, it: int, device: torch.device):
        from ..utils.distributed import get_rank
        seed = (int(self.args.seed) * 1_000_003 + get_rank() * 7919 + epoch * 100_003 + it) % (2 ** 32)
        gen = torch.Generator(device=device).manual_seed(seed)
        return np.random.RandomState(seed), gen

    def forward_views(self, model, batch, epoch: int, it: int):
        """Corrupt both views, forward them separately, return the loss terms' inputs."""
        imgs1, rots1, imgs2, rots2 = batch
        rng, gen = self.corruption_rng(epoch, it, imgs1.device)
        imgs1_aug = distortImages(imgs1, rng=rng, generator=gen)
        imgs2_aug = distortImages(imgs2, rng=rng, generator=gen)
        rot1_p, con1_p, rec1, r_w, cn_w, rec_w = model(imgs1_aug)
        rot2_p, con2_p, rec2, _, _, _ = model(imgs2_aug)
        return dict(rot_p=torch.cat([rot1_p, rot2_p]), rots=torch.cat([rots1, rots2]), con1=con1_p, con2=con2_p,
                    recon=torch.cat([rec1, rec2]), clean=torch.cat([imgs1, imgs2]), weights=(r_w, cn_w, rec_w),
                    corrupted=(imgs1_aug, imgs2_aug))

    def training_step(self, student, batch, epoch, it=0, labels=None, index=None):
        o = self.forward_views(student, batch, epoch, it)
        r_w, cn_w, rec_w = o["weights"]
        loss, (l_rot, l_con, l_rec) = self.criterion(o["rot_p"], o["rots"], o["con1"], o["con2"], o["recon"],
                                                     o["clean"], r_w, cn_w, rec_w)
        return loss, {"RotationLoss": l_rot.item(), "RotationScalar": r_w.item(), "ContrastiveLoss": l_con.item(),
                      "ContrastiveScalar": cn_w.item(), "ReconstructionLoss": l_rec.item(),
                      "ReconstructionScalar": rec_w.item()}


_SIT_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "stl10": "stl10", "svhn": "svhn",
                 "flowers": "flowers102", "flowers102": "flowers102", "pets": "pets", "aircraft": "aircraft",
                 "cars": "cars", "fashion_mnist": "fashion_mnist", "imagenet": "imagefolder",
                 "tinyimagenet": "imagefolder", "imagefolder": "imagefolder", "synthetic": "synthetic"}


def _sit_dataset(name: str) -> str:
    key = name.lower().replace("-", "_")
    if key not in _SIT_DATASETS:
        raise argparse.ArgumentTypeError(f"unknown --data-set {name!r}; known: {', '.join(sorted(_SIT_DATASETS))} "
                                         "(other folders: --data-set imagefolder)")
    return _SIT_DATASETS[key]


def _none_or_float(v: str) -> float:
    return 0.0 if str(v).lower() == "none" else float(v)


# --------------------------------------------------------------------------- --training-mode finetune
#: SiT-v1 main.py's finetuning defaults in main_finetune.py's names (lr per 512 images -> blr per 256)
SIT_FINETUNE_DEFAULTS = ["--model", "sit_base", "--batch_size", "72", "--epochs", "501", "--blr", "2.5e-4",
                         "--min_lr", "1e-5", "--warmup_lr", "1e-6", "--warmup_epochs", "5", "--weight_decay", "0.05",
                         "--drop_path", "0.1", "--layer_decay", "1.0", "--lr_sched", "timm_epoch",
                         "--model_ema", "true", "--model_ema_decay", "0.99996", "--repeated_aug", "true",
                         "--smoothing", "0.1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
                         "--aa", "rand-m9-mstd0.5-inc1", "--color_jitter", "0.4",
                         "--dataset", "cifar10", "--num_workers", "10", "--patch_size", "16"]
_RENAMES = {"--batch-size": "--batch_size", "--min-lr": "--min_lr", "--weight-decay": "--weight_decay",
            "--output": "--output_dir", "--validate-every": "--val_freq", "--dataset_location": "--data_path",
            "--data-set": "--dataset", "--input-size": "--input_size", "--drop-path": "--drop_path",
            "--warmup-lr": "--warmup_lr", "--warmup-epochs": "--warmup_epochs", "--color-jitter": "--color_jitter",
            "--clip-grad": "--clip_grad", "--model-ema-decay": "--model_ema_decay",
            "--representation-size": "--representation_size", "--cutmix-minmax": "--cutmix_minmax",
            "--mixup-prob": "--mixup_prob", "--mixup-switch-prob": "--mixup_switch_prob",
            "--mixup-mode": "--mixup_mode", "--SiT_LinearEvaluation": "--sit_linear_evaluation",
            "--dist-eval": "--dist_eval"}
#: main.py flags with no meaning here (device placement, pinned memory, the launcher's world size)
_IGNORED = {"--pin-mem", "--no-pin-mem", "--model-ema-force-cpu", "--world_size", "--start_epoch"}
_SWITCHES = {"--model-ema": ("--model_ema", "true"), "--no-model-ema": ("--model_ema", "false"),
             "--repeated-aug": ("--repeated_aug", "true"), "--no-repeated-aug": ("--repeated_aug", "false")}


def is_sit_finetune(argv) -> bool:
    """``--method sit --training-mode finetune`` among ``argv``."""
    a = list(argv)
    def value(flag):
        for i, x in enumerate(a):
            if x == flag and i + 1 < len(a):
                return a[i + 1]
            if x.startswith(flag + "="):
                return x.split("=", 1)[1]
        return None
    return value("--method") == "sit" and value("--training-mode") == "finetune"


def finetune_argv(argv) -> list[str]:
    """The seed's ``main.py --training-mode finetune`` flags as ``main_finetune.py`` flags, after SiT's
    finetuning defaults: names translated (``--batch-size`` -> ``--batch_size``, ``--data-set`` ->
    ``--dataset``, ``--output`` -> ``--output_dir``, ...), ``--lr`` (per 512 images) -> ``--blr`` (per 256),
    ``--SiT_LinearEvaluation 1`` -> ``--sit_linear_evaluation true``; other flags pass unchanged."""
    out = list(SIT_FINETUNE_DEFAULTS)
    a = list(argv)
    i = 0
    while i < len(a):
        flag, val = a[i], None
        if "=" in flag and flag.startswith("--"):
            flag, val = flag.split("=", 1)
        if flag in ("--method", "--training-mode"):
            i += 1 if val is not None else 2
            continue
        if flag in _IGNORED:
            takes = val is None and i + 1 < len(a) and not a[i + 1].startswith("--")
            i += 2 if takes else 1
            continue
        if flag in _SWITCHES:
            out += list(_SWITCHES[flag])
            i += 1
            continue
        takes_value = i + 1 < len(a) and not (a[i + 1].startswith("--") and not _is_number(a[i + 1]))
        if val is None and takes_value:
            val = a[i + 1]
            i += 2
        else:
            i += 1
        if flag == "--lr" and val is not None:
            out += ["--blr", repr(float(val) / 2)]
        elif flag == "--data-set" and val is not None:
            out += ["--dataset", _sit_dataset(val)]
        elif flag == "--SiT_LinearEvaluation" and val is not None:
            out += ["--sit_linear_evaluation", "true" if int(val) else "false"]
        elif flag == "--clip-grad" and val is not None and val.lower() == "none":
            continue
        else:
            out += [_RENAMES.get(flag, flag)] + ([val] if val is not None else [])
    if "--nb_classes" not in out:  # SiT takes the class count from the dataset
        from ..data.datasets import DATASET_INFO
        ds = out[len(out) - 1 - out[::-1].index("--dataset") + 1]
        n = DATASET_INFO.get(ds).num_classes if ds in DATASET_INFO else None
        if n:
            out += ["--nb_classes", str(n)]
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
