"""Collapse monitors: the figures against hand values, the warnings, and every EMA-teacher method
reporting them after training steps."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from method_helpers import build_method
from ssvit.methods.collapse import CollapseMonitor, collapse_warnings, embedding_std


def test_uniform_teacher_has_entropy_log_k_and_zero_kl():
    m = CollapseMonitor()
    m.observe(torch.zeros(6, 16), torch.zeros(1, 16), 0.04)
    s = m.distribution_stats()
    assert s["teacher_entropy"] == pytest.approx(math.log(16), abs=1e-6)
    assert s["teacher_kl_uniform"] == pytest.approx(0.0, abs=1e-6) and s["log_out_dim"] == pytest.approx(math.log(16))
    assert any("near uniform" in w for w in collapse_warnings(s))
    assert m.distribution_stats() == {}  # read once per epoch, then reset


def test_one_dominant_dimension_has_kl_log_k():
    logits = torch.zeros(4, 8)
    logits[:, 3] = 100.0
    m = CollapseMonitor()
    m.observe(logits[:2], torch.zeros(1, 8), 0.1)
    m.observe(logits[2:], torch.zeros(1, 8), 0.1)
    s = m.distribution_stats()
    assert s["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert s["teacher_kl_uniform"] == pytest.approx(math.log(8), abs=1e-5)
    assert any("single prototype" in w for w in collapse_warnings(s))


def test_hand_computed_distribution_with_center_and_temperature():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    center = torch.tensor([[0.5, 0.0]])
    p = torch.softmax((logits - center) / 0.5, dim=-1)
    ent = float(-(p * p.log()).sum(-1).mean())
    mean = p.mean(0)
    kl = float((mean * (mean * 2).log()).sum())
    m = CollapseMonitor()
    m.observe(logits, center, 0.5)
    s = m.distribution_stats()
    assert s["teacher_entropy"] == pytest.approx(ent, rel=1e-6) and s["teacher_kl_uniform"] == pytest.approx(kl, rel=1e-5)
    assert collapse_warnings({**s, "embed_std": 0.2, "embed_dim": 16}) == []


def test_embedding_std_and_collapsed_embedding_warning():
    same = torch.ones(5, 16)
    assert embedding_std(same) == pytest.approx(0.0, abs=1e-7)
    w = collapse_warnings({"embed_std": embedding_std(same), "embed_dim": 16})
    assert len(w) == 1 and "barely varies" in w[0]
    x = torch.tensor([[3.0, 4.0], [4.0, 3.0]])
    f = x / 5
    assert embedding_std(x) == pytest.approx(float(f.std(0).mean()))


TINY = ["--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
        "--local_crops_number", "2", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
        "--epochs", "2", "--batch_size_per_gpu", "4"]


@pytest.mark.parametrize("flags", [
    ["--method", "dino"],
    ["--method", "ibot", "--patch_out_dim", "32"],
    ["--method", "ibot_sere", "--patch_out_dim", "32", "--overlap_size", "3", "3", "--sere_channel_sizes", "4", "2"],
    ["--method", "dino_sere", "--overlap_size", "3", "3", "--sere_channel_sizes", "4", "2"],
    ["--method", "esvit"],
    ["--method", "esvit", "--arch", "swin_pico", "--global_crops_size", "64", "--local_crops_size", "32",
     "--use_dense_prediction", "true"],
], ids=["dino", "ibot", "ibot_sere", "dino_sere", "esvit_vit", "esvit_swin"])
def test_every_ema_method_reports_collapse_figures(flags):
    torch.manual_seed(0)
    m, args = build_method(TINY + flags)
    tf = m.build_transform(args)
    imgs = [Image.fromarray((np.random.RandomState(i).rand(70, 70, 3) * 255).astype(np.uint8)) for i in range(4)]
    batch = default_collate([tf(im) for im in imgs])
    for _ in range(2):
        m.training_step(m.student, batch, 0, 0)
    s = m.epoch_stats(batch)
    assert {"teacher_entropy", "teacher_kl_uniform", "embed_std", "embed_dim"} <= set(s)
    assert 0 < s["teacher_entropy"] <= s["log_out_dim"] + 1e-6 and s["log_out_dim"] == pytest.approx(math.log(32))
    assert s["teacher_kl_uniform"] >= -1e-6 and s["embed_std"] > 0
    bb = m.teacher.backbone
    assert s["embed_dim"] == getattr(bb, "num_features", None) or s["embed_dim"] == bb.embed_dim
