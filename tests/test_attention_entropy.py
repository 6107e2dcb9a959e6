"""EsViT's attention entropy (ssvit.evaluation.attention_entropy) and analyze_models.py --vis_entropy."""
import json
import math
import os
import pickle
import sys

import pytest
import torch

from ssvit.evaluation.attention_entropy import EntropyMeter, attention_entropy, block_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_FMNIST = os.path.exists("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """This file: small models, fastest on one thread (conftest.single_thread)."""


def test_entropy_hand_values():
    a = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0],
                      [0.5, 0.25, 0.125, 0.125]])
    # uniform over 4 keys: 2 bits; one-hot: 0 (0 log 0 = 0, no NaN); 1/2, 1/4, 1/8, 1/8: 1.75 bits
    torch.testing.assert_close(attention_entropy(a), torch.tensor([2.0, 0.0, 1.0, 1.75]))


def test_block_entropy_first_window_and_query_clamp():
    heads, n = 2, 4
    attn = torch.zeros(3, heads, n, n)
    attn[0, 0] = 0.25  # head 0 of window 0: uniform rows -> 2 bits
    attn[0, 1] = torch.eye(n)  # head 1: one-hot rows -> 0 bits
    attn[0, 1, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # ... except query 0: 1 bit -> mean 1/4
    attn[1:] = 1.0 / n  # other windows are ignored
    attn[1:, :, :, :2] = 0.5
    attn[1:, :, :, 2:] = 0.0
    # 4 queries < 49: averaged over the queries there are
    torch.testing.assert_close(block_entropy(attn), torch.tensor([2.0, 0.25]))
    torch.testing.assert_close(block_entropy(attn[0]), torch.tensor([2.0, 0.25]))  # (heads, Nq, Nk)
    torch.testing.assert_close(block_entropy(attn, num_queries=1), torch.tensor([2.0, 1.0]))
    big = torch.full((1, 1, 60, 8), 1 / 8)
    big[0, 0, 49:] = torch.tensor([1.0] + [0.0] * 7)  # queries 49.. are not counted (EsViT: 0..48)
    torch.testing.assert_close(block_entropy(big), torch.tensor([3.0]))
    with pytest.raises(ValueError):
        block_entropy(torch.rand(4, 4))


def test_entropy_meter_running_mean():
    uniform, onehot = torch.full((1, 2, 3, 4), 0.25), torch.eye(4)[:3].expand(1, 2, 3, 4)
    meter = EntropyMeter()
    for blocks in ([uniform, onehot], [onehot, onehot], [uniform, uniform]):
        meter.update(blocks)
    assert meter.count == 3
    got = meter.values()
    assert len(got) == 2 and all(len(b) == 2 for b in got)
    assert got[0] == pytest.approx([4 / 3, 4 / 3]) and got[1] == pytest.approx([2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="blocks"):
        meter.update([uniform])


def _run(tmp_path, arch, ckpt_model, dataset, n=3, size=56, extra=()):
    from ssvit.cli import analyze as analyze_models
    ckpt = tmp_path / f"{arch}.pth"
    torch.save({"teacher": ckpt_model.state_dict()}, ckpt)
    out_dir = tmp_path / "out"
    out = analyze_models.main(["--arch", arch, "--patch_size", "4", "--pretrained_weights", str(ckpt),
                               "--dataset", dataset, "--image_size", str(size), "--max_images", str(n),
                               "--output_dir", str(out_dir), "--vis_entropy", "true", *extra])
    stem = out_dir / dataset / "attn_entropy_avg_all_queries_no_sort"
    with open(f"{stem}.pickle", "rb") as f:
        saved = pickle.load(f)
    assert json.loads(open(f"{stem}.json").read()) == saved == out["entropy"]
    return saved


def _check_bounds(saved, model, size):
    with torch.no_grad():
        shapes = [a.shape for a in model.eval().get_all_selfattention(torch.zeros(1, 3, size, size))]
    assert len(saved) == len(shapes)
    for values, shape in zip(saved, shapes):
        assert len(values) == shape[1]  # one value per head
        assert all(0.0 <= v <= math.log2(shape[-1]) + 1e-5 for v in values), (values, shape)


def test_vis_entropy_swin_pico_end_to_end(tmp_path):
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    model = create_backbone("swin_pico", drop_path_rate=0.0)
    saved = _run(tmp_path, "swin_pico", model, "synthetic")
    assert len(saved) == 5  # depths 1-1-2-1
    _check_bounds(saved, model, 56)
    # random weights: attention is near uniform -> close to log2 of the window's 49 keys
    assert saved[0][0] > 0.9 * math.log2(49)


@pytest.mark.skipif(not HAS_FMNIST, reason="dataset-fashion-mnist not installed")
def test_vis_entropy_vit_pico_fashion_mnist_matches_hand_computation(tmp_path):
    from torchvision import transforms as T

    from ssvit.data import build_dataset
    from ssvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    model = create_backbone("vit_pico", patch_size=4, img_size=56)
    with torch.no_grad():  # sharper, head-dependent attention than the near-uniform init
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(20.0)
    saved = _run(tmp_path, "vit_pico", model, "fashion_mnist", n=3)
    assert len(saved) == 4 and all(len(b) == 3 for b in saved)
    _check_bounds(saved, model, 56)
    # by hand: the 3 first test images, every block, first image row, queries 0..48 (CLS + 48 patches)
    ds = build_dataset("fashion_mnist", None, train=False)
    tf = T.Compose([T.Resize(56, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(56), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    per_image = []
    with torch.no_grad():
        for i in range(3):
            attns = model.eval().get_all_selfattention(tf(ds[i][0].convert("RGB")).unsqueeze(0))
            # nats -> bits; xlogy(0, 0) = 0 (sharp heads underflow to exact zeros, NaN in EsViT's a*log2(a))
            per_image.append(torch.stack([(-torch.special.xlogy(a[0, :, :49], a[0, :, :49]).sum(-1)).mean(-1)
                                          for a in attns]) / math.log(2))
    ref = torch.stack(per_image).mean(0)  # (blocks, heads)
    torch.testing.assert_close(torch.tensor(saved, dtype=torch.float32), ref, atol=1e-4, rtol=1e-4)
    assert ref.std() > 0.05  # the check is not trivially uniform
