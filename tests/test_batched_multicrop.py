"""ssvit/data/batched_multicrop.py (``--augmentation batched``): each batched step against torchvision's
own operation, the whole pipeline against the per-image PIL pipeline's statistics, and the engine's use
of it (exact resume, one-line errors)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from ssvit.data.batched_multicrop import (BatchedMultiCrop, crop_resize_flip, gaussian_blur, image_to_uint8_tensor,
                                          random_resized_crop_boxes, solarize)
from ssvit.data.transforms import DataAugmentationDINO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n=6, c=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def test_boxes_follow_random_resized_crop_rules():
    g = torch.Generator().manual_seed(0)
    b = random_resized_crop_boxes(4000, 28, 28, (0.05, 0.4), g)
    top, left, h, w = b.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    area = (h * w).double() / 784
    # rounded sides move the area a little outside U(0.05, 0.4) x 784; the ratio stays near (3/4, 4/3)
    assert area.min() > 0.02 and area.max() < 0.47
    assert (w.double() / h).min() >= 0.5 and (w.double() / h).max() <= 2.0
    # the distribution of torchvision's get_params (same rules, its own draws): mean area and side
    torch.manual_seed(0)
    ref = torch.tensor([transforms.RandomResizedCrop.get_params(torch.zeros(1, 28, 28), [0.05, 0.4], [3 / 4, 4 / 3])
                        for _ in range(4000)], dtype=torch.float64)
    assert abs(area.mean() - (ref[:, 2] * ref[:, 3] / 784).mean()) < 0.01
    assert abs(h.double().mean() - ref[:, 2].mean()) < 0.3
    assert abs(top.double().mean() - ref[:, 0].mean()) < 0.4


def test_boxes_take_the_first_try_that_fits():
    """Near the whole image most tries overflow a side: each image must use its first fitting try (or the
    fallback), never an overflowing one, and match torchvision's area and fallback rate."""
    g = torch.Generator().manual_seed(0)
    b = random_resized_crop_boxes(4000, 28, 28, (0.9, 1.0), g)
    top, left, h, w = b.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    torch.manual_seed(0)
    ref = torch.tensor([transforms.RandomResizedCrop.get_params(torch.zeros(1, 28, 28), [0.9, 1.0], [3 / 4, 4 / 3])
                        for _ in range(4000)], dtype=torch.float64)
    assert abs((h * w).double().mean() - (ref[:, 2] * ref[:, 3]).mean()) < 6.0  # of ~740 px
    assert abs((h != w).double().mean() - (ref[:, 2] != ref[:, 3]).double().mean()) < 0.04


def test_whole_image_and_fallback_boxes_equal_torchvision():
    g = torch.Generator().manual_seed(0)
    b = random_resized_crop_boxes(5, 28, 28, (1.0, 1.0), g, ratio=(1.0, 1.0))
    assert b.tolist() == [[0, 0, 28, 28]] * 5
    # nothing fits a 10 x 40 image at scale 1, ratio 1: torchvision's centre-crop fallback
    b = random_resized_crop_boxes(3, 10, 40, (1.0, 1.0), g, ratio=(1.0, 1.0))
    ref = transforms.RandomResizedCrop.get_params(torch.zeros(1, 10, 40), [1.0, 1.0], [1.0, 1.0])
    assert b.tolist() == [list(ref)] * 3


def test_resample_identity_flip_and_pixel_centres():
    x = _images(3, 3, 16).float() / 255
    whole = torch.tensor([[0, 0, 16, 16]] * 3)
    no = torch.zeros(3, dtype=torch.bool)
    torch.testing.assert_close(crop_resize_flip(x, whole, no, 16), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(crop_resize_flip(x, whole, ~no, 16), x.flip(-1), atol=1e-5, rtol=0)
    # an 8 x 8 box at (2, 4) read at 8 px is that window (pixel centres map onto pixel centres)
    box = torch.tensor([[2, 4, 8, 8]] * 3)
    torch.testing.assert_close(crop_resize_flip(x, box, no, 8), x[..., 2:10, 4:12], atol=1e-5, rtol=0)


def test_resample_enlargement_equals_torchvision_bicubic_inside():
    x = _images(2, 1, 28).float() / 255
    box = torch.tensor([[6, 3, 12, 12], [10, 10, 14, 14]])
    out = crop_resize_flip(x, box, torch.zeros(2, dtype=torch.bool), 24)
    for n, (t, l, h, w) in enumerate(box.tolist()):
        # torchvision resizes the cut-out window, so compare away from its borders (where it repeats the
        # window's edge while grid_sample reads the image beyond it)
        ref = TF.resize(x[n:n + 1, :, t:t + h, l:l + w], [24, 24], transforms.InterpolationMode.BICUBIC,
                        antialias=False).clamp(0, 1)
        torch.testing.assert_close(out[n:n + 1, :, 4:-4, 4:-4], ref[..., 4:-4, 4:-4], atol=1e-5, rtol=0)


def test_gaussian_blur_equals_torchvision_per_image():
    x = _images(3, 3, 20).float() / 255
    sigma = torch.tensor([0.7, 0.0, 1.3])
    out = gaussian_blur(x, sigma)
    k = 2 * math.ceil(3 * 1.3) + 1
    torch.testing.assert_close(out[0], TF.gaussian_blur(x[0], [k, k], [0.7, 0.7]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], x[1])
    torch.testing.assert_close(out[2], TF.gaussian_blur(x[2], [k, k], [1.3, 1.3]), atol=1e-6, rtol=0)


def test_pipeline_blur_draws_sigma_per_image_with_its_probability():
    aug = BatchedMultiCrop(global_crops_size=224)  # DINO's radii: U(0.1, 2) px
    x = torch.zeros(64, 1, 15, 15)
    x[:, :, 7, 7] = 1.0  # an impulse: what remains at the centre tells the blur's sigma
    centre = lambda out: out[:, 0, 7, 7]  # noqa: E731
    assert torch.equal(aug.blur(x, torch.zeros(64), torch.Generator().manual_seed(0)), x)
    out = aug.blur(x, torch.ones(64), torch.Generator().manual_seed(0))
    # sigma ~ U(0.1, 2): the centre keeps ~0.04 (sigma 2) to 1 (sigma below ~0.25) of the impulse; a
    # visible blur (sigma above ~0.3) for about 89 % of the images, with spread-out strengths
    assert (centre(out) > 0.03).all() and centre(out).std() > 0.05
    assert (centre(out) < 0.999).double().mean() > 0.75
    half = aug.blur(x, torch.full((64,), 0.5), torch.Generator().manual_seed(0))
    assert 0.2 < (centre(half) < 0.999).double().mean() < 0.7


def test_solarize_inverts_from_128_on_selected_images():
    x = torch.tensor([0.0, 100 / 255, 128 / 255, 1.0]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    out = solarize(x, torch.tensor([True, False]))
    torch.testing.assert_close(out[0].flatten(), torch.tensor([0.0, 100 / 255, 127 / 255, 0.0]))
    torch.testing.assert_close(out[1], x[1])


def test_pipeline_shapes_range_and_determinism():
    aug = BatchedMultiCrop(local_crops_number=3, global_crops_size=28, local_crops_size=14)
    x = _images(5, 1, 28)
    a = aug(x, torch.Generator().manual_seed(1))
    assert [t.shape for t in a] == [(5, 3, 28, 28)] * 2 + [(5, 3, 14, 14)] * 3
    assert all(t.dtype == torch.float32 for t in a)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    lo, hi = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    assert all(((t >= lo - 1e-5) & (t <= hi + 1e-5)).all() for t in a)
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    assert not torch.equal(a[0], c[0])
    # grey in, grey out: the three channels are one image normalised three ways
    torch.testing.assert_close(a[0][:, 0] * 0.229 + 0.485, a[0][:, 2] * 0.225 + 0.406, atol=1e-5, rtol=0)


def test_pipeline_matches_the_pil_pipeline_in_distribution():
    """Same transform family as DataAugmentationDINO: each crop's mean pixel and contrast over 2,000
    Fashion-MNIST-like images agree with the PIL pipeline's within sampling error (a crop's mean has a
    spread of ~1 normalised unit, so the difference of two means has a standard error of ~0.03)."""
    g = torch.Generator().manual_seed(0)
    # blobs on black, like Fashion-MNIST: a bright centred shape of random size and brightness
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    r = 5 + 8 * torch.rand(2000, 1, 1, generator=g)
    level = 120 + 135 * torch.rand(2000, 1, 1, generator=g)
    imgs = (((yy - 14) ** 2 + (xx - 14) ** 2 < r ** 2) * level).to(torch.uint8).unsqueeze(1)
    batched = BatchedMultiCrop(local_crops_number=2, global_crops_size=28, local_crops_size=14)(imgs, g)
    pil = DataAugmentationDINO(local_crops_number=2, global_crops_size=28, local_crops_size=14)
    torch.manual_seed(0)
    per_image = [pil(Image.fromarray(im[0].numpy(), mode="L")) for im in imgs]
    for k in range(4):
        ours = batched[k][:, 0]
        ref = torch.stack([c[k] for c in per_image])[:, 0]
        assert abs(ours.mean() - ref.mean()) < 0.1, k
        assert abs(ours.std(dim=(1, 2)).mean() - ref.std(dim=(1, 2)).mean()) < 0.06, k


def test_image_to_uint8_tensor_keeps_pixels():
    a = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    t = image_to_uint8_tensor(Image.fromarray(a, mode="L"))
    assert t.dtype == torch.uint8 and t.shape == (1, 28, 28) and torch.equal(t[0], torch.from_numpy(a))


TINY = ["--dataset", "synthetic", "--synthetic_size", "48", "--arch", "vit_pico", "--patch_size", "4",
        "--global_crops_size", "32", "--local_crops_size", "16", "--local_crops_number", "2", "--out_dim", "64",
        "--head_hidden_dim", "64", "--head_bottleneck_dim", "32", "--batch_size_per_gpu", "8", "--num_workers", "0",
        "--print_freq", "1", "--tensorboard", "false", "--lr", "0.005", "--augmentation", "batched", "--epochs", "2"]


def _run(args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_engine_batched_run_resumes_bit_identical(tmp_path):
    from ssvit.utils.checkpoint import load_checkpoint
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    p = _run(TINY + ["--output_dir", str(ref)])
    assert p.returncode == 0, p.stderr[-2000:]
    p = _run(TINY + ["--output_dir", str(cut), "--max_iters", "8"])  # stops in epoch 1 (6 iterations an epoch)
    assert p.returncode == 0, p.stderr[-2000:]
    mid = load_checkpoint(str(cut / "checkpoint.pth"))
    assert (mid["epoch"], mid["iter_in_epoch"]) == (1, 2)
    p = _run(TINY + ["--output_dir", str(cut)])
    assert p.returncode == 0 and "Resumed from" in p.stdout, p.stderr[-2000:]
    a, b = load_checkpoint(str(ref / "checkpoint.pth")), load_checkpoint(str(cut / "checkpoint.pth"))
    for k in a["teacher"]:
        assert torch.equal(a["teacher"][k], b["teacher"][k]), k


def test_engine_uses_the_batch_transform_on_uint8_batches(tmp_path):
    from ssvit.cli.pretrain import get_args_parser, make_trainer
    from ssvit.config import parse_with_config
    argv = TINY + ["--output_dir", str(tmp_path / "r")]
    t = make_trainer(parse_with_config(get_args_parser(argv), argv))
    assert isinstance(t.batch_transform, BatchedMultiCrop) and t.dataset.seed is None
    img, _, _ = t.dataset[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)  # the loader only stacks images
    seen = []
    orig = t.step.__call__

    class Spy:
        def __call__(self, batch, *a, **k):
            seen.append([tuple(c.shape) for c in batch])
            return orig(batch, *a, **k)
    t.step = Spy()
    t.args.max_iters = 1
    t.fit()
    assert seen[0] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2


@pytest.mark.parametrize("flags,message", [
    (["--method", "ibot", "--patch_out_dim", "64"],
     "--augmentation batched is implemented for DINO's multi-crop (--method dino), not for --method ibot"),
    (["--dataset", "imagefolder", "--data_path", "/tmp"], "--augmentation batched stacks whole images"),
])
def test_engine_batched_bad_input_is_one_line(tmp_path, flags, message, capsys):
    from ssvit.cli import pretrain as main_pretrain
    capsys.readouterr()
    code = main_pretrain.main(TINY + ["--output_dir", str(tmp_path / "r")] + flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
