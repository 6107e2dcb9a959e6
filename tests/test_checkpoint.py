"""Checkpoint I/O: atomic writes, safe loading of the originals' pickles, key handling."""
import argparse
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from ssvit.utils.checkpoint import CheckpointError, load_checkpoint, load_state_checked, save_atomic
from ssvit.models.loading import extract_backbone_state


def rename_in_pickle(src, dst, old: bytes, new: bytes):
    z = zipfile.ZipFile(src)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            data = z.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            out.writestr(info, data)


def test_original_full_checkpoint_with_namespace_and_numpy1_scalars_loads_safely(tmp_path):
    obj = {"epoch": 3, "args": argparse.Namespace(lr=np.float64(0.1), arch="vit_small"), "x": np.float64(2.5),
           "teacher": {"backbone.cls_token": torch.ones(1, 1, 4)}}
    torch.save(obj, tmp_path / "np2.pth")
    # as written by NumPy 1.x, which the original checkpoints were
    rename_in_pickle(tmp_path / "np2.pth", tmp_path / "np1.pth", b"numpy._core.multiarray", b"numpy.core.multiarray")
    for name in ("np2.pth", "np1.pth"):
        ck = load_checkpoint(str(tmp_path / name))
        assert ck["args"].arch == "vit_small" and float(ck["args"].lr) == 0.1 and float(ck["x"]) == 2.5


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"student": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(str(path))


def test_atomic_save_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_atomic({"a": torch.zeros(3)}, str(path))
    save_atomic({"a": torch.ones(3)}, str(path))
    assert torch.equal(load_checkpoint(str(path))["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]

    class Boom:
        def __reduce__(self):
            raise RuntimeError("crash while pickling")

    with pytest.raises(RuntimeError, match="crash while pickling"):
        save_atomic({"a": Boom()}, str(path))
    assert torch.equal(load_checkpoint(str(path))["a"], torch.ones(3))  # old file intact
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # temp file removed


def test_extract_backbone_state_key_rules():
    t = torch.zeros(1)
    full = {"teacher": {"backbone.cls_token": t, "head.mlp.0.weight": t},
            "student": {"module.backbone.cls_token": t, "module.head.last_layer.weight_g": t}}
    assert list(extract_backbone_state(full, "teacher")) == ["cls_token"]
    assert list(extract_backbone_state(full, "student")) == ["cls_token"]
    assert list(extract_backbone_state({"state_dict": {"cls_token": t}}, "teacher")) == ["cls_token"]  # iBOT file
    assert list(extract_backbone_state({"cls_token": t, "norm.weight": t}, "teacher")) == ["cls_token", "norm.weight"]
    with pytest.raises(CheckpointError, match="top-level keys: epoch"):
        extract_backbone_state({"epoch": 1, "foo": {"a": "b"}}, "teacher")


def test_load_state_checked_lists_mismatches():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError) as e:
        load_state_checked(model, {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)})
    msg = str(e.value)
    assert "missing keys (1): bias" in msg and "unexpected keys (1): extra" in msg
    assert "weight: checkpoint (2, 4) vs model (2, 3)" in msg
    assert torch.count_nonzero(model.weight) > 0  # nothing loaded
