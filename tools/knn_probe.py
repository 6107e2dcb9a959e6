#!/usr/bin/env python
"""Quick k-NN probe of a pretraining checkpoint on a subset of Fashion-MNIST (short-run comparisons).

Top-1 of the teacher backbone, of the same ViT with random weights (seed 0) and of raw pixels, on
the first ``--train_images`` / ``--test_images`` images (28 px, ImageNet normalisation, no resize),
weighted k-NN (T = 0.07) as ``eval_knn.py``, for each of ``--features`` (``ssvit.evaluation.features``:
one forward pass per model serves all of them). ``--train_images 60000 --test_images 10000`` is
the default job's full evaluation. For other datasets use ``eval_knn.py``.

``--arch`` / ``--patch_size`` / ``--cfg`` default to what the checkpoint's run recorded (ssvit and DINO
checkpoints keep their ``args``); give them for a file that does not record them.

Example: python tools/knn_probe.py runs/fashion_mnist_dino/checkpoint.pth --features cls cls_avgpool
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


from ssvit.cli import exit_status  # noqa: E402
from ssvit.data import build_dataset  # noqa: E402
from ssvit.data.transforms import normalize_transform  # noqa: E402
from ssvit.models.loading import load_backbone_state, pretrained_state_of  # noqa: E402
from ssvit.evaluation import knn_classifier  # noqa: E402
from ssvit.evaluation.features import FEATURES, backbone_features, check_features  # noqa: E402
from ssvit.models import create_backbone  # noqa: E402
from ssvit.utils.checkpoint import CheckpointError, load_checkpoint  # noqa: E402


def recorded_model(ckpt: dict) -> dict:
    """``arch`` / ``patch_size`` / ``cfg`` of the run that wrote the checkpoint ``ckpt`` (its ``args``), as
    far as recorded."""
    run = ckpt.get("args")
    run = vars(run) if isinstance(run, argparse.Namespace) else run if isinstance(run, dict) else {}
    return {k: run[k] for k in ("arch", "patch_size", "cfg") if run.get(k)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--arch", default=None, help="default: the checkpoint's recorded arch")
    p.add_argument("--patch_size", type=int, default=None,
                   help="default: the checkpoint's recorded patch size, else the arch's own")
    p.add_argument("--checkpoint_key", default="teacher")
    p.add_argument("--train_images", type=int, default=10000)
    p.add_argument("--test_images", type=int, default=2000)
    p.add_argument("--nb_knn", type=int, default=20)
    p.add_argument("--cfg", default=None, help="EsViT YAML model config (Swin / CvT / ViL archs; default: the "
                                                "checkpoint's recorded one when --arch is not given)")
    p.add_argument("--features", nargs="+", default=["cls"], choices=list(FEATURES))
    p.add_argument("--skip_baselines", action="store_true", help="the trained model only (no random init, no pixels)")
    args = p.parse_args(argv)
    # the file is read once, before any data is (like the checks below): a missing or unreadable file,
    # or one without --checkpoint_key, raises CheckpointError here
    ckpt = load_checkpoint(args.checkpoint)
    trained_state = pretrained_state_of(ckpt, args.checkpoint_key, args.checkpoint)
    if args.arch is None or args.patch_size is None:
        recorded = recorded_model(ckpt)
        if args.arch is None:
            if "arch" not in recorded:
                raise ValueError(f"'{args.checkpoint}' does not record its architecture: give --arch")
            args.arch, args.cfg = recorded["arch"], args.cfg or recorded.get("cfg")
        if args.patch_size is None and recorded.get("arch") == args.arch:
            args.patch_size = recorded.get("patch_size")
    del ckpt  # the backbone's state is all that is kept while the data are read
    kwargs = dict(img_size=28)
    if args.cfg:
        from ssvit.models.esvit_config import backbone_kwargs_from_cfg, load_esvit_config
        kwargs.update(backbone_kwargs_from_cfg(args.arch, load_esvit_config(args.cfg)))
    elif args.patch_size is not None:  # else the factory's own default
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
            load_backbone_state(model, trained_state, args.arch)
            print(f"Pretrained weights found at {args.checkpoint} and loaded with key '{args.checkpoint_key}'")
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
    # an unknown arch, a feature the model cannot give, a missing checkpoint: one line, exit 2 (a checkpoint
    # that does not fit the arch: its mismatch list, no traceback)
    sys.exit(exit_status(main, (ValueError, CheckpointError)))
