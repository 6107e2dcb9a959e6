"""Multi-crop augmentation, seeded per-sample randomness, resumable sampler, datasets, bad files."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ssvit.data import (DataAugmentationDINO, DataError, FashionMNIST, ImageFolderSafe, ResumableDistributedSampler,
                        SyntheticShapes, TransformedDataset, build_dataset)
from ssvit.data.datasets import _read_idx
from torch.utils.data import DistributedSampler


def test_multicrop_shapes_and_normalisation():
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 3, global_crops_size=32, local_crops_size=16)
    crops = aug(Image.new("RGB", (40, 50), (255, 0, 0)))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    # a pure red image, normalised with ImageNet stats, unless grayscale / jitter changed it
    assert crops[0].dtype == torch.float32 and crops[0].abs().max() < 3


def test_default_multicrop_sizes_are_the_originals():
    crops = DataAugmentationDINO()(Image.new("RGB", (300, 260)))
    assert len(crops) == 10 and crops[0].shape[-1] == 224 and crops[-1].shape[-1] == 96


def test_seeded_transform_is_a_function_of_seed_epoch_index():
    base = SyntheticShapes(8, 32)
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 2, 24, 12)
    a = TransformedDataset(base, aug, seed=3)
    b = TransformedDataset(base, aug, seed=3)
    torch.manual_seed(123)
    x1 = a[5][0]
    torch.manual_seed(999)  # global RNG must not matter, nor be consumed
    state = torch.get_rng_state()
    x2 = b[5][0]
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(u, v) for u, v in zip(x1, x2))
    b.set_epoch(1)
    assert not all(torch.equal(u, v) for u, v in zip(x1, b[5][0]))


def test_resumable_sampler_equals_distributed_sampler_and_skips():
    ds = list(range(23))
    for rank in range(2):
        ref = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
        ours = ResumableDistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
        ref.set_epoch(4)
        ours.set_epoch(4)
        full = list(ref)
        assert list(ours) == full
        ours.set_start(5)
        assert list(ours) == full[5:] and len(ours) == len(full) - 5
        ours.set_epoch(5)
        assert len(list(ours)) == len(full)  # the skip applies to one epoch only


def write_idx(path, arr):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, arr.ndim]))
        for d in arr.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reader(tmp_path):
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 251
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", imgs)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.array([4, 0, 9]))
    ds = FashionMNIST(str(tmp_path), train=True)
    img, label = ds[2]
    assert len(ds) == 3 and label == 9 and img.size == (28, 28) and img.mode == "L"
    assert np.array_equal(np.asarray(img), imgs[2])
    rgb = FashionMNIST(str(tmp_path), train=True, rgb=True)[2][0]
    assert rgb.mode == "RGB" and all(np.array_equal(np.asarray(rgb)[..., c], imgs[2]) for c in range(3))
    # truncated file -> clear error
    with open(tmp_path / "bad-idx", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(10))
    with pytest.raises(DataError, match="truncated"):
        _read_idx(str(tmp_path / "bad-idx"))


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = build_dataset("fashion_mnist", None, train=False)
    assert len(ds) == 10000 and sorted(set(ds.targets)) == list(range(10))


def make_folder(root, n=3, corrupt=0):
    for c in ("a", "b"):
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    for i in range(corrupt):
        (root / "a" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_imagefolder_corrupt_images_skip_and_fail(tmp_path):
    make_folder(tmp_path, corrupt=1)
    ds = ImageFolderSafe(str(tmp_path), on_bad_image="skip")
    bad_idx = [i for i, (p, _) in enumerate(ds.samples) if "bad" in p][0]
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        img, _ = ds[bad_idx]
    assert img.size == (20, 20) and ds.bad_images == 1
    strict = ImageFolderSafe(str(tmp_path), on_bad_image="fail")
    with pytest.raises(DataError, match="cannot read image .*bad0.jpg"):
        strict[bad_idx]


def test_missing_data_paths_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("imagefolder", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="not a usable ImageFolder"):
        build_dataset("imagefolder", str(tmp_path))  # empty folder
    with pytest.raises(DataError, match="--download"):
        build_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet22k", None)


def test_blur_radius_scales_with_global_crop_size():
    full = DataAugmentationDINO(global_crops_size=224)
    blur = [t for t in full.global_transfo1.transforms if type(t).__name__ == "GaussianBlur"][0]
    assert (blur.radius_min, blur.radius_max, blur.prob) == (0.1, 2.0, 1.0)  # the original at 224 px
    small = DataAugmentationDINO(global_crops_size=28, local_crops_size=12)
    blur = [t for t in small.local_transfo.transforms if type(t).__name__ == "GaussianBlur"][0]
    assert blur.radius_max == pytest.approx(0.25) and blur.prob == 0.5


def test_fast_to_tensor_normalize_is_bit_identical_to_torchvision():
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from ssvit.data.transforms import normalize_transform
    rng = np.random.RandomState(0)
    ref = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                          (0.229, 0.224, 0.225))])
    fast = normalize_transform()
    for shape in ((28, 28, 3), (17, 23, 3)):
        img = Image.fromarray((rng.rand(*shape) * 255).astype(np.uint8))
        out = fast(img)
        assert torch.equal(out, ref(img)) and out.is_contiguous() and out.dtype == torch.float32
    grey = Image.fromarray((rng.rand(9, 11) * 255).astype(np.uint8))  # mode L, one-channel stats
    ref1 = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))])
    assert torch.equal(normalize_transform((0.5,), (0.25,))(grey), ref1(grey))
    # other modes fall back to torchvision
    rgba = Image.fromarray((rng.rand(5, 5, 4) * 255).astype(np.uint8), mode="RGBA")
    ref4 = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 4, (0.25,) * 4)])
    assert torch.equal(normalize_transform((0.5,) * 4, (0.25,) * 4)(rgba), ref4(rgba))


def test_grey_images_augment_bit_identically_to_their_rgb_copies():
    """Fashion-MNIST stays 'L' through every built-in pipeline (cheaper); each crop, mask and grid
    must equal what the same seed gives on the image converted to RGB -- colour jitter's draws
    included (its hue step is a no-op on grey, skipped for 'L')."""
    from ssvit.data.masking import MaskedCrops, MaskGenerator
    from ssvit.data.overlap import DataAugmentationOverlap
    from ssvit.data.transforms import DataAugmentationiBOT, eval_transform
    rng = np.random.RandomState(0)
    # smooth blobs + noise, like garments: exercises contrast, blur and solarisation thresholds
    yy, xx = np.mgrid[:28, :28]
    greys = [np.clip(rng.rand() * 255 * np.exp(-((yy - rng.randint(8, 20)) ** 2 + (xx - 14) ** 2) / rng.randint(20, 90))
                     + rng.rand(28, 28) * 40, 0, 255).astype(np.uint8) for _ in range(40)]
    grey_ds = [(Image.fromarray(g, mode="L"), 0) for g in greys]
    rgb_ds = [(im.convert("RGB"), 0) for im, _ in grey_ds]
    pipelines = {
        "dino": DataAugmentationDINO(local_crops_number=2, global_crops_size=28, local_crops_size=12),
        "ibot": MaskedCrops(DataAugmentationiBOT(local_crops_number=2, global_crops_size=28, local_crops_size=12),
                            MaskGenerator(pred_ratio=0.3, pred_ratio_var=0.2), patch_size=4, n_global=2),
        "sere": DataAugmentationOverlap(local_crops_number=2, overlap_size=(7, 7), global_crops_size=28,
                                        local_crops_size=12),
        "eval": eval_transform(28, 28),
    }

    def flat(x):
        if isinstance(x, (torch.Tensor, np.ndarray)):
            return [torch.as_tensor(x)]
        if isinstance(x, dict):
            return [t for k in sorted(x) for t in flat(x[k])]
        return [t for v in x for t in flat(v)]

    for name, tf in pipelines.items():
        a = TransformedDataset(grey_ds, tf, seed=5)
        b = TransformedDataset(rgb_ds, tf, seed=5)
        for i in range(len(greys)):
            ta, tb = flat(a[i][0]), flat(b[i][0])
            assert len(ta) == len(tb) and ta[0].shape[0] == 3, name
            assert all(torch.equal(x, y) for x, y in zip(ta, tb)), (name, i)
