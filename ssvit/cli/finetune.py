"""Supervised finetuning of an ssvit backbone, MAE ``main_finetune.py`` style, on the shared engine.

    python main_finetune.py --model vit_small --patch_size 16 --finetune dino_deitsmall16_pretrain.pth \\
        --data_path /data/imagenet --nb_classes 1000 --batch_size 64 --epochs 100 --blr 5e-4 --layer_decay 0.65 \\
        --output_dir runs/ft
    python main_finetune.py --model vit_shallow --patch_size 7 --input_size 28 --dataset fashion_mnist --nb_classes 10 \\
        --finetune runs/fashion_mnist_dino/checkpoint.pth --epochs 5 --output_dir runs/fm_ft

MAE's flags and defaults (``--batch_size 64 --epochs 50 --accum_iter 1 --model --input_size 224
--drop_path 0.1 --clip_grad None --weight_decay 0.05 --lr None --blr 1e-3 --layer_decay 0.75
--min_lr 1e-6 --warmup_epochs 5 --color_jitter None --aa rand-m9-mstd0.5-inc1 --smoothing 0.1
--reprob 0.25 --remode pixel --recount 1 --mixup 0.8 --cutmix 1.0 --cutmix_minmax None
--mixup_prob 1.0 --mixup_switch_prob 0.5 --mixup_mode batch --finetune --nb_classes 1000
--global_pool (default) / --cls_token --output_dir --seed 0 --resume --eval --dist_eval --num_workers 10``) plus the engine's (``--dataset``,
``--device``, ``--use_fp16``, ``--val_freq``, ``--model_ema``, ...). ``--lr`` is the absolute
learning rate; by default ``blr x effective batch / 256``. ``--clip_grad`` clips the global norm
(MAE), not per parameter (DINO). ``--model`` takes ssvit's architecture names (``vit_small``,
``vit_base``, ``swin_tiny``, ...) with ``--patch_size``. ``--data_path`` holds ``train/`` and ``val/``
for ImageFolder data; built-in datasets use their train / test splits. Outputs: checkpoint.pth
(resumed automatically), checkpoint_best.pth, log.txt with ``val_acc1`` / ``val_acc5`` per epoch,
config.yaml.
"""
from __future__ import annotations

import argparse
import os
import sys


from ssvit.cli import exit_status
from ssvit.config import build_pretrain_parser, parse_with_config
from ssvit.data import DataError
from ssvit.engine.distributed import DeviceError
from ssvit.methods.finetune import add_finetune_args
from ssvit.utils.checkpoint import CheckpointError


def get_args_parser() -> argparse.ArgumentParser:
    parser = build_pretrain_parser()
    parser.description = "ssvit finetuning (MAE main_finetune.py flags)"
    add_finetune_args(parser)
    # MAE's --lr (absolute) and --clip_grad (global norm) replace the engine's options of those names
    parser.conflict_handler = parser._optionals.conflict_handler = "resolve"
    S = argparse.SUPPRESS
    parser.add_argument("--blr", dest="lr", type=float, default=1e-3,
                        help="base learning rate: absolute_lr = base_lr * total_batch_size / 256")
    parser.add_argument("--lr", dest="abs_lr", type=float, default=None, help="learning rate (absolute lr)")
    parser.add_argument("--clip_grad", dest="finetune_clip_grad", type=float, default=None,
                        help="clip the global gradient norm (default: no clipping)")
    parser.add_argument("--batch_size", dest="batch_size_per_gpu", type=int, default=S,
                        help="batch size per GPU (effective batch size is batch_size * accum_iter * # gpus)")
    parser.add_argument("--model", dest="arch", type=str, default=S, help="name of the model (ssvit architecture)")
    parser.add_argument("--drop_path", dest="drop_path_rate", type=float, default=S, help="drop path rate")
    parser.add_argument("--eval", action="store_true", help="perform evaluation only")
    # iBOT's run_class_finetuning.py (BEiT's recipe): recognised so that it is refused by name, not run as MAE's
    for flag in IBOT_FINETUNE_FLAGS:
        parser.add_argument(flag, dest="ibot_" + flag.lstrip("-"), nargs="?", const=True, default=None,
                            help=argparse.SUPPRESS)
    parser.set_defaults(method="finetune", epochs=50, batch_size_per_gpu=64, weight_decay=0.05, weight_decay_end=0.05,
                        warmup_epochs=5, min_lr=1e-6, drop_path_rate=0.1, saveckp_freq=0, num_workers=10,
                        output_dir="./output_dir", data_path="/datasets01/imagenet_full_size/061417/")
    return parser


#: flags of iBOT's evaluation/classification_layer_decay/run_class_finetuning.py that MAE's main_finetune.py lacks
IBOT_FINETUNE_FLAGS = ("--layer_scale_init_value", "--disable_rel_pos_bias", "--abs_pos_emb", "--use_cls",
                       "--imagenet_default_mean_and_std", "--update_freq")


def parse(argv):
    args = parse_with_config(get_args_parser(), argv)
    given = [f for f in IBOT_FINETUNE_FLAGS if getattr(args, "ibot_" + f.lstrip("-")) is not None]
    if given:
        raise ValueError(f"{' '.join(given)}: iBOT's run_class_finetuning.py (BEiT's finetuning: unscaled lr, its "
                         "own schedule) is not implemented; main_finetune.py runs MAE's recipe (--blr, --layer_decay, "
                         "--accum_iter, --cls_token; ImageNet mean/std, no LayerScale, absolute position embeddings)")
    if args.method != "finetune":
        raise ValueError("main_finetune.py runs --method finetune")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.abs_lr is not None:  # the engine's lr is per 256 images (it scales by the effective batch)
        args.lr = args.abs_lr * 256 / (args.batch_size_per_gpu * args.accum_iter * world)
    args.clip_grad = 0.0  # the engine's per-parameter clipping stays off; MAE's global-norm clip is the task's
    args.finetune_clip_grad = args.finetune_clip_grad or 0.0
    args.global_crops_size = args.input_size
    args.weight_decay_end = args.weight_decay  # MAE / DeiT keep the weight decay constant
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run():
        args = parse(argv)
        from ssvit.engine.trainer import Trainer
        from ssvit.methods import get_method
        trainer = Trainer(args, get_method(args.method))
        if args.eval:
            trainer.maybe_resume()
            trainer.method.validate(0)
            return
        trainer.fit()
    from ssvit.engine.loop import TrainingDiverged
    try:
        return exit_status(run, (DataError, CheckpointError, DeviceError, ValueError, OSError), "main_finetune.py")
    except TrainingDiverged as e:
        print(f"main_finetune.py: error: {e}", file=sys.stderr)
        return 1


cli = main
