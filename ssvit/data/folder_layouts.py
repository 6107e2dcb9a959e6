"""Image folders in the layouts the originals' datasets ship in, read as labelled image lists.

* ``tinyimagenet`` (Tiny-ImageNet-200, as downloaded): ``train/<wnid>/images/*.JPEG`` and
  ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``); the classes are
  the train folder's wnids, sorted (ImageFolder's order), so val labels index the same classes.
* ``imagenet100`` (the ImageNet-100 layout RelViT reads): ``train.X1`` ... ``train.X4`` each holding
  ``<wnid>/`` folders, ``val.X/<wnid>/`` and ``Labels.json`` (``{wnid: name}``); classes = the sorted wnids.

A folder without the layout's marker file (``val/val_annotations.txt``, ``Labels.json``) is read as
``train/`` and ``val/`` ImageFolders (a copy already converted to class folders). Both give an
``ImageFolderSafe`` (the same unreadable-image policy as ``--dataset imagefolder``) of the
requested split.
"""
from __future__ import annotations

import glob
import json
import os

from .datasets import DataError, ImageFolderSafe

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def has_layout(name: str, root: str) -> bool:
    marker = os.path.join("val", "val_annotations.txt") if name == "tinyimagenet" else "Labels.json"
    return os.path.isfile(os.path.join(root, marker))


def _images(folder: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                  if p.lower().endswith(IMAGE_SUFFIXES))


def tiny_imagenet(root: str, train: bool, on_bad_image: str = "skip") -> ImageFolderSafe:
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DataError(f"'{root}' is not Tiny-ImageNet: no train/ folder (expected train/<wnid>/images, val/images "
                        "and val/val_annotations.txt)")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    index = {c: i for i, c in enumerate(classes)}
    if train:
        samples = [(p, index[c]) for c in classes for p in _images(os.path.join(train_dir, c))]
    else:
        ann = os.path.join(root, "val", "val_annotations.txt")
        if not os.path.isfile(ann):
            raise DataError(f"Tiny-ImageNet val split: '{ann}' does not exist")
        samples = []
        with open(ann) as f:
            for n, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2 or parts[1] not in index:
                    raise DataError(f"{ann}, line {n}: expected 'file<TAB>wnid' with a wnid of train/, got {line!r}")
                samples.append((os.path.join(root, "val", "images", parts[0]), index[parts[1]]))
    return ImageFolderSafe.from_samples(samples, classes, on_bad_image, where=root)


def imagenet100(root: str, train: bool, on_bad_image: str = "skip") -> ImageFolderSafe:
    labels = os.path.join(root, "Labels.json")
    if not os.path.isfile(labels):
        raise DataError(f"'{root}' is not the ImageNet-100 layout: no Labels.json (expected train.X1..X4/, val.X/)")
    with open(labels) as f:
        classes = sorted(json.load(f))
    index = {c: i for i, c in enumerate(classes)}
    parts = sorted(glob.glob(os.path.join(root, "train.X*"))) if train else [os.path.join(root, "val.X")]
    if not parts or not all(os.path.isdir(p) for p in parts):
        raise DataError(f"'{root}': no {'train.X*' if train else 'val.X'} folder")
    samples = []
    for part in parts:
        for c in sorted(os.listdir(part)):
            if os.path.isdir(os.path.join(part, c)):
                if c not in index:
                    raise DataError(f"'{os.path.join(part, c)}': class {c} is not in Labels.json")
                samples += [(p, index[c]) for p in _images(os.path.join(part, c))]
    return ImageFolderSafe.from_samples(samples, classes, on_bad_image, where=root)
