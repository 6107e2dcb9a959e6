"""ssvit/data/clean_view.py and DINO's ``--teacher_views clean`` (the teacher labels the un-augmented
image, the student sees DINO's crops): the view against evaluation's preprocessing, the per-image and
per-batch forms against each other, the loss against a hand-built one, a whole engine run."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ssvit.cli.pretrain import get_args_parser
from method_helpers import build_method
from ssvit.config import parse_with_config
from ssvit.data.batched_multicrop import BatchedMultiCrop
from ssvit.data.clean_view import BatchedWithCleanView, WithCleanView, clean_view_batch, clean_view_transform
from ssvit.data.transforms import DataAugmentationDINO, eval_transform, normalize_transform
from ssvit.methods.dino import DINO
from ssvit.objectives import DINOLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _grey_images(n=5, side=28):
    return [Image.fromarray(np.random.RandomState(i).randint(0, 256, (side, side), dtype=np.uint8), mode="L")
            for i in range(n)]


def test_clean_view_is_the_normalised_image_at_its_own_size_and_eval_preprocessing_otherwise():
    ims = _grey_images()
    for im in ims:  # 28 px at size 28: nothing resized, exactly ToTensor + Normalize
        assert torch.equal(clean_view_transform(28)(im), normalize_transform()(im))
    rgb = Image.fromarray(np.random.RandomState(9).randint(0, 256, (30, 40, 3), dtype=np.uint8))
    v = clean_view_transform(24)(rgb)
    assert v.shape == (3, 24, 24) and torch.equal(v, eval_transform(24, 24)(rgb))


def test_batched_clean_view_equals_the_per_image_one():
    ims = _grey_images()
    batch = torch.stack([torch.from_numpy(np.array(im))[None] for im in ims])  # uint8 (5, 1, 28, 28)
    ours = clean_view_batch(batch, 28)
    assert ours.shape == (5, 3, 28, 28) and ours.dtype == torch.float32
    assert torch.equal(ours, torch.stack([clean_view_transform(28)(im) for im in ims]))  # bit for bit
    rgb = torch.from_numpy(np.random.RandomState(3).randint(0, 256, (2, 3, 30, 40), dtype=np.uint8))
    small = clean_view_batch(rgb, 24)  # resized (bicubic, antialiased) then centre-cropped
    ref = torch.stack([clean_view_transform(24)(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in rgb])
    assert small.shape == (2, 3, 24, 24) and (small - ref).abs().mean() < 0.05  # PIL vs tensor bicubic


def test_wrappers_append_the_view_and_leave_the_crops_alone():
    ims = _grey_images(4)
    aug = DataAugmentationDINO(local_crops_number=2, global_crops_size=28, local_crops_size=14)
    import random
    random.seed(0)
    torch.manual_seed(0)
    plain = aug(ims[0])
    random.seed(0)
    torch.manual_seed(0)
    out = WithCleanView(aug, 28)(ims[0])
    assert len(out) == 5 and all(torch.equal(a, b) for a, b in zip(out[:4], plain))
    assert torch.equal(out[4], normalize_transform()(ims[0]))
    batch = torch.stack([torch.from_numpy(np.array(im))[None] for im in ims])
    crops = BatchedMultiCrop(local_crops_number=2, global_crops_size=28, local_crops_size=14)
    ref = crops(batch, torch.Generator().manual_seed(1))
    out = BatchedWithCleanView(crops, 28)(batch, torch.Generator().manual_seed(1))
    assert len(out) == 5 and all(torch.equal(a, b) for a, b in zip(out[:4], ref))  # no extra draws
    assert torch.equal(out[4], clean_view_batch(batch, 28))


FLAGS = ["--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
         "--local_crops_number", "2", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
         "--epochs", "2", "--drop_path_rate", "0"]


def test_clean_teacher_view_is_the_target_of_every_student_crop():
    torch.manual_seed(0)
    flags = FLAGS + ["--teacher_views", "clean"]
    m = DINO(parse_with_config(get_args_parser(flags), flags))
    crops = [torch.randn(6, 3, 16, 16) for _ in range(2)] + [torch.randn(6, 3, 8, 8) for _ in range(2)]
    clean = torch.randn(6, 3, 16, 16)
    seen = []
    m.teacher.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    ref_loss = DINOLoss(32, 4, 0.04, 0.04, 0, 2)
    ref_loss.load_state_dict(m.criterion.state_dict())
    loss, _ = m.training_step(m.student, crops + [clean], epoch=1)
    assert len(seen) == 1 and torch.equal(seen[0], clean)  # one teacher pass, on the clean view only
    with torch.no_grad():
        t = m.teacher(clean)
        want = ref_loss(m.student(crops), torch.cat([t, t]), epoch=1)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-6, atol=1e-6)
    # the default: the teacher sees the 2 global crops, and a clean view is not expected
    m0 = DINO(parse_with_config(get_args_parser(FLAGS), FLAGS))
    seen.clear()
    m0.teacher.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    m0.training_step(m0.student, crops, epoch=1)
    assert len(seen) == 1 and isinstance(seen[0], list) and len(seen[0]) == 2


def test_transforms_follow_the_flag_and_dino_sere_refuses_it():
    flags = FLAGS + ["--teacher_views", "clean"]
    m, args = build_method(flags)
    assert isinstance(m.build_transform(args), WithCleanView)
    m, args = build_method(flags + ["--augmentation", "batched"])
    assert isinstance(m.build_batch_transform(args), BatchedWithCleanView)
    m, args = build_method(FLAGS + ["--augmentation", "batched"])
    assert isinstance(m.build_batch_transform(args), BatchedMultiCrop)
    with pytest.raises(ValueError, match="--teacher_views clean is implemented for --method dino, not for"):
        build_method(flags + ["--method", "dino_sere"])


@pytest.mark.parametrize("augmentation", ["pil", "batched"])
def test_engine_trains_with_a_clean_teacher_view(tmp_path, augmentation):
    from ssvit.utils.checkpoint import load_checkpoint
    argv = ["--dataset", "synthetic", "--synthetic_size", "16", "--arch", "vit_pico", "--patch_size", "4",
            "--global_crops_size", "32", "--local_crops_size", "16", "--local_crops_number", "1", "--out_dim", "32",
            "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--batch_size_per_gpu", "8",
            "--num_workers", "0", "--tensorboard", "false", "--epochs", "1", "--teacher_views", "clean",
            "--augmentation", augmentation, "--output_dir", str(tmp_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *argv], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    ck = load_checkpoint(str(tmp_path / "checkpoint.pth"))
    assert ck["epoch"] == 1 and ck["args"].teacher_views == "clean"
    assert all(torch.isfinite(v).all() for v in ck["teacher"].values() if v.is_floating_point())
