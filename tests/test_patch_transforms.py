"""ssvit/data/batched_color.py and ssvit/data/patch_transforms.py: the vectorised per-patch transforms
equal RelViT's loop that calls the torchvision transform once per patch -- same values, and the same
random draws (the generator ends in the same state)."""
import pytest
import torch
from torchvision import transforms
from torchvision.transforms import functional as TF

from ssvit.data import batched_color as bc
from ssvit.data.patch_transforms import (PatchColorJitter, PatchRandomCrop, PatchRandomGrayscale, PatchRandomNoise,
                                         PatchRandomResizedCrop)
from ssvit.objectives.relvit import get_patch_transforms


class ReplaceNoise:
    def __call__(self, t):
        return torch.randn(t.size()) * 1.0 + 0.0


def per_patch(fn):
    """RelViT's PerPatchAug: ``fn`` once per patch of (N, C, p, p)."""
    return lambda x: torch.stack([fn(p) for p in x], 0)


def _same_as_loop(vectorised, reference, x, seed=0):
    torch.manual_seed(seed)
    want = reference(x)
    after_want = torch.rand(3)
    torch.manual_seed(seed)
    got = vectorised(x)
    after_got = torch.rand(3)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(after_got, after_want), "the random draws differ from the per-patch loop"
    return got


# normalised images (values outside [0, 1], so the blends' clamp matters), RGB and grey
STACKS = [torch.randn(49, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 1.5,
          torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(2)),
          torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(3))]


@pytest.mark.parametrize("x", STACKS, ids=["rgb_normalised", "rgb_unit", "grey"])
def test_color_jitter_equals_the_per_patch_loop(x):
    ref = per_patch(transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8))
    for seed in range(4):
        got = _same_as_loop(PatchColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), ref, x, seed)
        assert not torch.equal(got, x)


def test_color_jitter_with_some_ops_off_and_p_zero():
    x = STACKS[1]
    _same_as_loop(PatchColorJitter(0.0, 0.5, 0.0, 0.2, p=1.0),
                  per_patch(transforms.RandomApply([transforms.ColorJitter(0.0, 0.5, 0.0, 0.2)], p=1.0)), x)
    torch.manual_seed(0)
    assert torch.equal(PatchColorJitter(0.4, 0.4, 0.4, 0.1, p=0.0)(x), x)


@pytest.mark.parametrize("op", range(4))
def test_each_colour_op_equals_torchvision(op):
    x = STACKS[0]
    factors = torch.linspace(0.6, 1.4, x.shape[0], dtype=torch.float64) if op < 3 else \
        torch.linspace(-0.1, 0.1, x.shape[0], dtype=torch.float64)
    tv = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)[op]
    want = torch.stack([tv(p, float(f)) for p, f in zip(x, factors)])
    torch.testing.assert_close(bc.COLOR_OPS[op](x, factors), want, rtol=0, atol=1e-6)


def test_hsv_round_trip_and_grey_pixels():
    x = torch.rand(5, 3, 6, 6)
    x[:, :, 0, 0] = 0.3  # a grey pixel: h = s = 0, no 0/0
    hsv = bc.rgb_to_hsv(x)
    assert torch.isfinite(hsv).all() and hsv[:, 0, 0, 0].eq(0).all() and hsv[:, 1, 0, 0].eq(0).all()
    torch.testing.assert_close(bc.hsv_to_rgb(hsv), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("x", STACKS[:2], ids=["4px", "8px"])
def test_random_crop_equals_the_per_patch_loop(x):
    size = x.shape[-1] - 1
    _same_as_loop(PatchRandomCrop(size), per_patch(transforms.RandomCrop(size)), x)


def test_random_resized_crop_equals_the_per_patch_loop():
    x = STACKS[1]
    for scale, ratio in (((0.85, 0.85), (1, 1)), ((0.3, 1.0), (0.75, 1.33))):  # one crop size; several
        _same_as_loop(PatchRandomResizedCrop(8, scale, ratio),
                      per_patch(transforms.RandomResizedCrop(8, scale=scale, ratio=ratio)), x)


@pytest.mark.parametrize("x", STACKS, ids=["rgb_normalised", "rgb_unit", "grey"])
def test_grayscale_and_noise_equal_the_per_patch_loop(x):
    got = _same_as_loop(PatchRandomGrayscale(0.5), per_patch(transforms.RandomGrayscale(0.5)), x)
    changed = (got != x).flatten(1).any(1).sum()
    assert (0 < changed < x.shape[0]) if x.shape[1] == 3 else changed == 0  # a grey patch is its own grey
    got = _same_as_loop(PatchRandomNoise(0.5), per_patch(transforms.RandomApply([ReplaceNoise()], p=0.5)), x)
    assert 0 < (got != x).flatten(1).any(1).sum() < x.shape[0]


@pytest.mark.parametrize("spec", ["colJitter:0.8-grayScale:0.2", "centCrop-colJitter-grayScale-randomNoise"])
def test_relvit_patch_transform_equals_the_originals_pipeline(spec):
    """get_patch_transforms against the original's Compose of PerPatchAug(torchvision) steps."""
    p = 8
    names = spec.split("-")
    tf = [lambda x: x.transpose(0, 1)]
    if any(n.startswith("centCrop") for n in names):
        tf += [transforms.CenterCrop(7), per_patch(transforms.RandomResizedCrop(p, scale=(0.85, 0.85), ratio=(1, 1)))]
    else:
        tf += [per_patch(transforms.RandomCrop(7)), transforms.Resize(p)]
    tf += [per_patch(transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)),
           per_patch(transforms.RandomGrayscale(p=0.2))]
    if "randomNoise" in names:
        tf += [per_patch(transforms.RandomApply([ReplaceNoise()], p=0.2))]
    tf += [lambda x: x.transpose(0, 1)]
    x = torch.randn(3, 16, p, p, generator=torch.Generator().manual_seed(4))
    _same_as_loop(get_patch_transforms(spec, p), transforms.Compose(tf), x)
