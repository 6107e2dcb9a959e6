#!/usr/bin/env python
"""Quick k-NN probe of a pretraining checkpoint on a subset of Fashion-MNIST (short-run comparisons).

Top-1 of the teacher backbone, of the same ViT with random weights (seed 0) and of raw pixels, on
the first ``--train_images`` / ``--test_images`` images (28 px, ImageNet normalisation, no resize),
weighted k-NN (T = 0.07) as ``eval_knn.py``, for each of ``--features`` (``ssvit.evaluation.features``:
one forward pass per model serves all of them). ``--train_images 60000 --test_images 10000`` is
the default job's full evaluation. For other datasets use ``eval_knn.py``.

Example: python scripts/knn_probe.py runs/x/checkpoint.pth --arch vit_pico --patch_size 7 --features cls cls_avgpool
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssvit.data import build_dataset  # noqa: E402
from ssvit.data.transforms import normalize_transform  # noqa: E402
from ssvit.engine.checkpoint import load_pretrained_weights  # noqa: E402
from ssvit.evaluation import knn_classifier  # noqa: E402
from ssvit.evaluation.features import FEATURES, backbone_features, check_features  # noqa: E402
from ssvit.models import create_backbone  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--arch", default="vit_pico")
    p.add_argument("--patch_size", type=int, default=4)
    p.add_argument("--checkpoint_key", default="teacher")
    p.add_argument("--train_images", type=int, default=10000)
    p.add_argument("--test_images", type=int, default=2000)
    p.add_argument("--nb_knn", type=int, default=20)
    p.add_argument("--cfg", default=None, help="EsViT YAML model config (Swin / CvT / ViL archs)")
    p.add_argument("--features", nargs="+", default=["cls"], choices=list(FEATURES))
    p.add_argument("--skip_baselines", action="store_true", help="the trained model only (no random init, no pixels)")
    args = p.parse_args(argv)
    kwargs = dict(img_size=28)
    if args.cfg:
        from ssvit.models.esvit_config import backbone_kwargs_from_cfg, load_esvit_config
        kwargs.update(backbone_kwargs_from_cfg(args.arch, load_esvit_config(args.cfg)))
    else:
        kwargs["patch_size"] = args.patch_size
    check_features(create_backbone(args.arch, **kwargs), args.features)  # before any data is read
    tf = normalize_transform()
    splits = {}
    for name, train, n in (("train", True, args.train_images), ("test", False, args.test_images)):
        ds = build_dataset("fashion_mnist", None, train=train)
        splits[name] = (torch.stack([tf(ds[i][0]) for i in range(n)]), torch.tensor(ds.targets[:n]))

    def top1(ftr, fte):
        ftr, fte = F.normalize(ftr, dim=1), F.normalize(fte, dim=1)
        return knn_classifier(ftr, splits["train"][1], fte, splits["test"][1], args.nb_knn, 0.07, num_classes=10)[0]

    results = {}
    for name in ("trained",) if args.skip_baselines else ("trained", "random_init"):
        torch.manual_seed(0)
        model = create_backbone(args.arch, **kwargs).eval()
        if name == "trained":
            load_pretrained_weights(model, args.checkpoint, args.checkpoint_key, args.arch)
        with torch.inference_mode():
            feats = {split: {kind: [] for kind in args.features} for split in splits}
            for split, (x, _) in splits.items():
                for c in x.split(500):
                    for kind, f in backbone_features(model, c, args.features).items():
                        feats[split][kind].append(f)
        for kind in args.features:
            key = name if len(args.features) == 1 else f"{name}/{kind}"
            results[key] = top1(torch.cat(feats["train"][kind]), torch.cat(feats["test"][kind]))
    if not args.skip_baselines:
        results["raw_pixels"] = top1(splits["train"][0].flatten(1), splits["test"][0].flatten(1))
    for k, v in results.items():
        print(f"{k}: {args.nb_knn}-NN top-1 {v:.2f}")
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # an unknown arch, a feature the model cannot give: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
