"""The originals' dataset layouts (ssvit/data/folder_layouts.py): Tiny-ImageNet-200 and ImageNet-100."""
import json
import os

import pytest
from PIL import Image

from ssvit.data import build_dataset
from ssvit.data.datasets import DataError


def _img(path, colour):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_tiny_imagenet_reads_train_class_folders_and_the_flat_val_with_its_annotations(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for c, wnid in enumerate(("n02", "n01")):  # classes are the sorted wnids: n01 -> 0, n02 -> 1
        for i in range(2):
            _img(str(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"), (c * 100, i, 0))
    _img(str(root / "val" / "images" / "val_0.JPEG"), (0, 0, 0))
    _img(str(root / "val" / "images" / "val_1.JPEG"), (100, 0, 0))
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t8\t8\nval_1.JPEG\tn01\t1\t1\t7\t7\n")
    train, val = build_dataset("tinyimagenet", str(root), train=True), build_dataset("tinyimagenet", str(root), train=False)
    assert train.classes == ["n01", "n02"] and sorted(train.targets) == [0, 0, 1, 1]
    assert [os.path.basename(p) for p, _ in train.samples][:2] == ["n01_0.JPEG", "n01_1.JPEG"]
    assert val.targets == [1, 0] and len(val) == 2  # from the annotations, not one class "images"
    img, label = val[0]
    assert img.size == (8, 8) and label == 1
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\n")
    with pytest.raises(DataError, match="line 1: expected 'file<TAB>wnid' with a wnid of train/"):
        build_dataset("tinyimagenet", str(root), train=False)


def test_imagenet100_reads_the_split_train_folders_val_and_labels(tmp_path):
    root = tmp_path / "imagenet100"
    (root).mkdir()
    (root / "Labels.json").write_text(json.dumps({"n03": "c", "n01": "a", "n02": "b"}))
    _img(str(root / "train.X1" / "n01" / "a.JPEG"), (1, 0, 0))
    _img(str(root / "train.X2" / "n03" / "c.JPEG"), (3, 0, 0))
    _img(str(root / "train.X2" / "n02" / "b.JPEG"), (2, 0, 0))
    _img(str(root / "val.X" / "n02" / "v.JPEG"), (2, 0, 0))
    train, val = build_dataset("imagenet100", str(root), train=True), build_dataset("imagenet100", str(root), train=False)
    assert train.classes == ["n01", "n02", "n03"] and train.targets == [0, 1, 2] and val.targets == [1]
    _img(str(root / "val.X" / "n77" / "x.JPEG"), (0, 0, 0))
    with pytest.raises(DataError, match="class n77 is not in Labels.json"):
        build_dataset("imagenet100", str(root), train=False)


def test_a_converted_copy_without_the_marker_files_reads_as_imagefolders(tmp_path):
    for split in ("train", "val"):
        _img(str(tmp_path / split / "n01" / "x.png"), (0, 0, 0))
    assert build_dataset("tinyimagenet", str(tmp_path), train=False).classes == ["n01"]


def test_relvit_and_sit_v2_dataset_names_use_these_layouts():
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.methods.relvit import RelViTMethod
    a = get_args_parser(["--method", "relvit"]).parse_args(["--method", "relvit", "--dataset", "imagenet100_56"])
    RelViTMethod.resolve_args(a)
    assert (a.dataset, a.img_height, a.num_classes, a.patch_size) == ("imagenet100", 56, 100, 8)
    a = get_args_parser(["--method", "relvit"]).parse_args(["--method", "relvit", "--dataset", "tiny_imagenet"])
    RelViTMethod.resolve_args(a)
    assert (a.dataset, a.num_classes) == ("tinyimagenet", 200)
