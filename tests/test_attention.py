"""CLS attention maps (ssvit.evaluation.attention) and ``ssvit attention``, on a tiny ViT."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from ssvit.evaluation.attention import attention_maps, save_attention_figure, threshold_masks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = 4


@pytest.fixture(scope="module")
def model():
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    return create_backbone("vit_pico", patch_size=P, num_classes=0, img_size=32).eval()


def _png(path):
    import matplotlib.image as mpimg
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_attention_maps_shape_and_mass(model):
    img = torch.randn(3, 34, 30)  # cropped to 32 x 28 -> an 8 x 7 patch grid
    attn, th = attention_maps(model, img, P)
    assert th is None
    assert attn.shape == (3, 32, 28) and attn.dtype == torch.float32
    # nearest upsampling: each 4x4 block is constant
    blocks = attn.reshape(3, 8, P, 7, P)
    torch.testing.assert_close(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    grid = blocks[:, :, 0, :, 0]  # (heads, 8, 7)
    mass = grid.sum((1, 2))
    assert (mass > 0).all() and (mass <= 1 + 1e-6).all()
    with torch.no_grad():
        full = model.get_last_selfattention(img[None, :, :32, :28])
    # what is missing from 1 is exactly the CLS -> CLS weight
    torch.testing.assert_close(mass, 1 - full[0, :, 0, 0])
    torch.testing.assert_close(grid.flatten(1), full[0, :, 0, 1:])


def test_threshold_mask_hand_example():
    a = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.7, 0.1, 0.1, 0.1]])
    # row 0 sorted .1 .2 .3 .4 -> cumsum .1 .3 .6 1.0 > 0.4 keeps .3 and .4; row 1: only .7 is needed
    assert threshold_masks(a, 0.6).tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_threshold_mask_keeps_about_threshold_of_mass(model, threshold):
    torch.manual_seed(1)
    img = torch.randn(1, 3, 32, 32)
    attn, th = attention_maps(model, img, P, threshold=threshold)
    assert th.shape == attn.shape == (3, 32, 32)
    assert set(th.unique().tolist()) <= {0.0, 1.0}
    a, m = attn[:, ::P, ::P].flatten(1), th[:, ::P, ::P].flatten(1).bool()
    share = a / a.sum(1, keepdim=True)
    for h in range(3):
        kept = share[h][m[h]].sum().item()
        assert threshold - 1e-5 <= kept < threshold + share[h].max().item() + 1e-5
        # the most attended patches are the kept ones
        assert share[h][m[h]].min() >= share[h][~m[h]].max()


def _script():
    from ssvit.cli import attention
    return attention


def test_visualize_attention_script_writes_pngs(model, tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    script = _script()
    out = tmp_path / "out"
    paths = script.main(["--arch", "vit_pico", "--patch_size", "4", "--pretrained_weights", str(ckpt),
                         "--image_size", "34", "36", "--threshold", "0.6", "--output_dir", str(out),
                         "--device", "cpu"])  # no --image_path: skimage's astronaut photo
    names = sorted(os.listdir(out))
    expected = ["img.png"] + [f"attn-head{j}.png" for j in range(3)] + [f"mask_th0.6_head{j}.png" for j in range(3)]
    assert names == sorted(expected) and len(paths) == 7
    img = _png(out / "img.png")
    assert img.shape[:2] == (32, 36)  # 34 x 36 cropped to multiples of 4
    assert img.min() == 0.0 and img.max() == 1.0  # min-max normalised
    assert _png(out / "attn-head0.png").shape[:2] == (32, 36)
    assert _png(out / "mask_th0.6_head1.png").shape[:2] == (500, 500)  # 5 x 5 inch at 100 dpi

    # an image file given by path; one size = shorter side
    from PIL import Image
    Image.fromarray((np.random.default_rng(0).random((30, 60, 3)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    out2 = tmp_path / "out2"
    script.main(["--arch", "vit_pico", "--patch_size", "4", "--pretrained_weights", str(ckpt),
                 "--image_path", str(tmp_path / "x.png"), "--image_size", "20", "--output_dir", str(out2),
                 "--device", "cpu"])
    assert sorted(os.listdir(out2)) == ["attn-head0.png", "attn-head1.png", "attn-head2.png", "img.png"]
    assert _png(out2 / "img.png").shape[:2] == (20, 40)

    capsys.readouterr()
    assert script.cli(["--arch", "vit_pico", "--patch_size", "4", "--output_dir", str(tmp_path / "o3")]) == 2
    assert "--pretrained_weights is required" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_save_attention_figure(model, tmp_path):
    torch.manual_seed(2)
    imgs = torch.randn(3, 3, 32, 32)
    maps = torch.stack([attention_maps(model, im, P)[0] for im in imgs])  # (3, heads, 32, 32)
    path = save_attention_figure(imgs, maps, str(tmp_path / "fig" / "attn.png"), titles=["a", "b", "c"])
    arr = _png(path)
    assert arr.shape[1] > arr.shape[0] and arr.shape[0] > 100
    assert arr[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(ValueError):
        save_attention_figure(imgs, maps[:2], str(tmp_path / "bad.png"))
