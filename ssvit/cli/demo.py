"""The embedded default job: DINO pretraining on Fashion-MNIST, then k-NN on the test split.

Prints the trained teacher's k-NN top-1 next to two baselines computed in the same run (the same
ViT with random weights, and k-NN on raw pixels), saves attention-map pictures of test images and
writes ``results.json`` in the output folder. Re-running resumes / reuses the finished pretraining.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout (configs/)

from ssvit.cli.pretrain import get_args_parser, make_trainer, run_as_command
from ssvit.config import parse_with_config
from ssvit.evaluation import build_knn_datasets, knn_classifier
from ssvit.evaluation.features import FEATURES, backbone_features, check_features
from ssvit.models import create_backbone


def load_split(ds, batch_size: int = 1000, num_workers: int = 2):
    """The whole (small) evaluation split as tensors: images (N, 3, H, W) float32, labels (N,) int64,
    in dataset order -- read and preprocessed once, shared by the three k-NN runs."""
    images, labels = [], []
    for x, y, _ in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


@torch.inference_mode()
def knn_top1(model, train, test, k: int, features: str = "cls", batch_size: int = 500) -> float:
    """Weighted k-NN (T = 0.07, DINO's) top-1 of ``model``'s L2-normalised ``features``
    (``ssvit.evaluation.features``); ``model=None`` means raw pixels."""
    def feats(x):
        if model is None:
            return F.normalize(x.flatten(1), dim=1)
        model.eval()
        return F.normalize(torch.cat([backbone_features(model, c, [features])[features].float()
                                      for c in x.split(batch_size)]), dim=1)

    return knn_classifier(feats(train[0]), train[1], feats(test[0]), test[1], k, 0.07)[0]


def class_name(dataset, label: int) -> str:
    classes = getattr(dataset, "classes", None)
    return classes[label] if classes else str(label)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--nb_knn", type=int, default=20)
    extra.add_argument("--attention_images", type=int, default=8)
    extra.add_argument("--knn_features", default="cls_avgpool", choices=sorted(FEATURES),
                       help="backbone feature for the k-NN rows (the same for the trained and the random ViT)")
    known, rest = extra.parse_known_args(argv)
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        rest = ["--config", os.path.join(ROOT, "configs", "fashion_mnist_dino.yaml")] + rest
    args = parse_with_config(get_args_parser(rest), rest)
    check_features(create_backbone(args.arch, patch_size=args.patch_size, img_size=args.global_crops_size),
                   [known.knn_features])  # before pretraining, not after

    t0 = time.time()
    trainer = make_trainer(args)
    trainer.fit()
    pretrain_s = time.time() - t0
    if trainer.interrupted:  # SIGTERM & co: the checkpoint is written; evaluating half a model would mislead
        print("Pretraining was stopped before its end: no evaluation. Run the same command again to resume.")
        return {"interrupted": True, "checkpoint": trainer.checkpoint_path()}

    t1 = time.time()
    eval_args = argparse.Namespace(dataset=args.dataset, data_path=args.data_path, download=args.download,
                                   eval_size=args.global_crops_size, synthetic_size=args.synthetic_size)
    train_ds, test_ds = build_knn_datasets(eval_args)
    teacher = trainer.method.teacher.backbone
    torch.manual_seed(args.seed)
    random_vit = create_backbone(args.arch, patch_size=args.patch_size, img_size=args.global_crops_size)
    k = known.nb_knn
    train, test = load_split(train_ds), load_split(test_ds)
    trained_row = f"{args.method}_teacher"
    results = {name: knn_top1(model, train, test, k, known.knn_features)
               for name, model in ((trained_row, teacher), ("random_init", random_vit), ("raw_pixels", None))}
    eval_s = time.time() - t1

    # attention maps of the first test images (teacher, last block, mean over heads)
    from ssvit.evaluation.attention import attention_maps, save_attention_figure
    n = known.attention_images
    samples = [test_ds[i] for i in range(n)]
    imgs = [s[0] for s in samples]
    maps = [attention_maps(teacher, im, args.patch_size)[0] for im in imgs]
    pic = save_attention_figure(torch.stack(imgs), maps, os.path.join(args.output_dir, "attention_maps.png"),
                                titles=[class_name(test_ds.base, s[1]) for s in samples])

    from ssvit.evaluation.run_summary import save_summary_figure, training_loss_curve
    curve = training_loss_curve(args.output_dir)
    summary_png = save_summary_figure(
        results, curve, os.path.join(args.output_dir, "summary.png"),
        title=f"Fashion-MNIST {k}-NN ({known.knn_features} features): {args.method} {args.arch}/{args.patch_size}, "
              f"pretraining {pretrain_s / 60:.1f} min")
    summary = {"k": k, "features": known.knn_features, "top1": results, "pretrain_seconds": round(pretrain_s, 1),
               "eval_seconds": round(eval_s, 1), "train_images": len(train_ds), "test_images": len(test_ds),
               "attention_png": pic, "summary_png": summary_png, "config": os.path.join(args.output_dir, "config.yaml")}
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nFashion-MNIST {k}-NN top-1 on {len(test_ds)} test images (train set: {len(train_ds)} images)")
    print(f"  {args.method} {args.arch}/{args.patch_size} teacher : {results[trained_row]:.2f}")
    print(f"  same ViT, random init   : {results['random_init']:.2f}")
    print(f"  raw pixels              : {results['raw_pixels']:.2f}")
    print(f"pretraining {pretrain_s / 60:.1f} min, evaluation {eval_s / 60:.1f} min; attention maps: {pic}; "
          f"summary: {summary_png}")
    return summary


def cli(argv=None) -> int:
    return run_as_command(lambda: main(argv))  # bad input: one line, exit 2 (the pretraining statuses)
