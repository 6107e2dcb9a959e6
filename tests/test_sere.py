"""SERE: overlap grids, relation alignment, relation heads, both losses, the methods and the seed commands."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssvit.cli.pretrain import get_args_parser, make_trainer
from ssvit.config import parse_with_config
from ssvit.data.overlap import DataAugmentationOverlap, OverlapCropPipeline, get_grid
from method_helpers import build_method, train_on_fixed_batch, transform_batch
from ssvit.models.sere import ChannelSERE, PixelSERE, align_relation, sampling
from ssvit.objectives import ChannelSERELoss, PixelSERELoss


# ------------------------------------------------------------------ grids
def test_get_grid_hand_computed_overlap_and_flip():
    # q = [0, 0, 10, 10], k = [5, 0, 10, 10]: overlap x in [5, 10], y in [0, 10]
    q, k = get_grid([0, 0, 10, 10, 0], [5, 0, 10, 10, 1], 3)
    # q: rel = [0.5, 0, 0.5, 1] -> x = 0.5, 0.75, 1.0 -> 2x-1 = 0, 0.5, 1; y = 0, .5, 1 -> -1, 0, 1
    torch.testing.assert_close(q[0, :, 0], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(q[:, 0, 1], torch.tensor([-1.0, 0.0, 1.0]))
    # k (flipped): rel = [0, 0, 0.5, 1] -> x = 0, .25, .5 -> flip 1-x = 1, .75, .5 -> 1, .5, 0
    torch.testing.assert_close(k[0, :, 0], torch.tensor([1.0, 0.5, 0.0]))
    assert torch.equal(q[1, :, 0], q[0, :, 0]) and torch.equal(k[:, 2, 1], q[:, 0, 1])
    # disjoint boxes -> all -2 (grid_sample then reads only zero padding)
    a, b = get_grid([0, 0, 4, 4, 0], [10, 10, 4, 4, 0], 5)
    assert torch.all(a == -2) and torch.all(b == -2) and a.shape == (5, 5, 2)


def test_overlap_grids_point_at_the_same_source_pixels():
    """Crop + flip an image whose pixels encode their own coordinates: sampling each crop at its
    grid must give the same source coordinates."""
    random.seed(0)
    H = W = 64
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    img = Image.fromarray(np.stack([xx * 4, yy * 4, np.zeros_like(xx)], -1).astype(np.uint8))
    pipe = OverlapCropPipeline(32, (0.3, 1.0), [])
    pipe.jitter = lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()  # geometry only
    checked = 0
    for _ in range(20):
        (a, box_a), (b, box_b) = pipe(img), pipe(img)
        ga, gb = get_grid(box_a, box_b, 7)
        if torch.all(ga == -2):
            continue
        # sample on an inner sub-grid (the outermost samples sit on crop edges, attenuated by padding)
        sa = F.grid_sample(a[None], ga[None, 1:-1, 1:-1], mode="bilinear", align_corners=False)[0]
        sb = F.grid_sample(b[None], gb[None, 1:-1, 1:-1], mode="bilinear", align_corners=False)[0]
        # coordinates agree within the resampling blur (a few source pixels = x4 in value)
        assert (sa[:2] - sb[:2]).abs().mean() < 4 * 2.5, (box_a, box_b)
        checked += 1
    assert checked >= 10


def test_overlap_augmentation_output_layout():
    random.seed(0)
    torch.manual_seed(0)
    t = DataAugmentationOverlap(local_crops_number=3, overlap_size=(5, 4), global_crops_size=32, local_crops_size=16)
    out = t(Image.new("RGB", (48, 40), (120, 30, 200)))
    assert [c.shape[-1] for c in out["crops"]] == [32, 32, 16, 16, 16]
    assert [g.shape for g in out["grid1"]] == [(5, 5, 2)] * 2 and [g.shape for g in out["grid2"]] == [(4, 4, 2)] * 2
    assert len(out["grid_local"]) == len(out["grid_global"]) == 6
    assert all(g.shape == (6, 6, 2) for g in out["grid_local"] + out["grid_global"])
    with pytest.raises(ValueError, match="2 global"):
        DataAugmentationOverlap(global_crops_number=3)


# ------------------------------------------------------------------ alignment
def test_sampling_at_pixel_centres_is_exact_and_edges_are_attenuated():
    # a 2x2 map: pixel centres are at -0.5, 0.5 with align_corners=False
    rel = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    c = torch.tensor([-0.5, 0.5])
    grid = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1)[None]  # (1, 2, 2, 2), x first
    torch.testing.assert_close(sampling(rel, grid), rel)
    # one sample at x=-1 (left edge), y=-0.5 (row 0) for both axes: half of pixel (0,0) on each axis
    g = torch.tensor([[[[-1.0, -0.5]]]])
    torch.testing.assert_close(sampling(rel, g), torch.tensor([[[[0.25 * rel[0, 0, 0, 0]]]]]))
    r2 = torch.rand(1, 1, 4, 4)
    torch.testing.assert_close(sampling(r2, g), 0.25 * r2[..., :1, :1])


def test_align_relation_uses_key_and_query_grids_on_their_axes():
    torch.manual_seed(0)
    rel = torch.rand(2, 3, 4, 4)  # (b, h, queries, keys) on a 2x2 map
    c = torch.tensor([-0.5, 0.5])
    ident = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1)[None].expand(2, -1, -1, -1)
    pick_first = torch.full((2, 1, 1, 2), -0.5)  # position (0, 0) only
    out = align_relation(rel, grid_keys=pick_first, grid_queries=ident)
    assert out.shape == (2, 3, 4, 1)
    torch.testing.assert_close(out[..., 0], rel[..., 0])  # all queries, key 0
    out = align_relation(rel, grid_keys=ident, grid_queries=pick_first)
    torch.testing.assert_close(out[:, :, 0], rel[:, :, 0])  # query 0, all keys


# ------------------------------------------------------------------ relation heads
def _identity_bn(head):
    head.eval()  # running mean 0 / var 1, weight 1, bias 0 -> BN(x) = x / sqrt(1 + eps)
    return head


def test_channel_and_pixel_relations_hand_computed():
    torch.manual_seed(0)
    B, N, C, h = 2, 4, 6, 3
    x = torch.randn(B, N, C)
    z = F.relu(x) / math.sqrt(1 + 1e-5)  # projection in eval mode
    ch = _identity_bn(ChannelSERE(C))
    rz, rp = ch(x, size=2)
    zc = z.transpose(1, 2) / 2  # (B, C, N) / size
    torch.testing.assert_close(rz, zc @ zc.transpose(1, 2))
    assert rp.shape == (B, C, C)
    px = _identity_bn(PixelSERE(C, num_heads=h))
    pz, pp = px(x)
    zh = z.view(B, N, h, C // h).permute(0, 2, 1, 3)  # channel c -> head c // (C/h)
    torch.testing.assert_close(pz, zh @ zh.transpose(-2, -1) * (C // h) ** -0.5)
    assert pp.shape == (B, h, N, N)


# ------------------------------------------------------------------ losses
def test_channel_loss_hand_computed_with_locals():
    torch.manual_seed(0)
    B, C, L = 2, 3, 1
    s, t, sl = torch.randn(2 * B, C, C), torch.randn(2 * B, C, C), torch.randn(L * B, C, C)
    out = ChannelSERELoss(0.1)(s, t, sl, 2, L)
    tp = torch.softmax(t / 0.1, -1)

    def ce(p, logits):
        return (-(p * torch.log_softmax(logits, -1)).sum(-1)).mean()
    expected = (ce(tp[:B], s[B:]) + ce(tp[:B], sl) + ce(tp[B:], s[:B]) + ce(tp[B:], sl)) / 4
    torch.testing.assert_close(out, expected)
    only_global = ChannelSERELoss(0.1)(s, t, None, 2, 0)
    torch.testing.assert_close(only_global, (ce(tp[:B], s[B:]) + ce(tp[B:], s[:B])) / 2)


def test_pixel_loss_hand_computed_with_overlap_sampling():
    torch.manual_seed(0)
    B, h, n, L = 2, 2, 4, 1
    s, t = torch.randn(2 * B, h, 9, 9), torch.randn(2 * B, h, 9, 9)
    s_loc, t_glob = torch.randn(L * B, h, n, n), torch.randn(2 * B, h, n, n)
    c = torch.tensor([-0.5, 0.5])
    ident = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1)[None].expand(B, -1, -1, -1)
    swap = ident.flip(2)  # mirror the x axis: the local crop is the flipped view
    out = PixelSERELoss(0.5)(s, t, s_loc, t_glob, [ident, ident], [swap, swap], 2, L)

    def ce(teacher_logits, student_logits):
        return (-(torch.softmax(teacher_logits, -1) * torch.log_softmax(student_logits, -1)).sum(-1)).mean()
    perm = torch.tensor([1, 0, 3, 2])  # x-mirror of a 2x2 map in raster order
    tg = t_glob / 0.5
    e = ce(t[:B] / 0.5, s[B:]) + ce(t[B:] / 0.5, s[:B])
    for iq in range(2):
        tq = tg[iq * B:(iq + 1) * B][:, :, perm][:, :, :, perm]
        e = e + ce(tq, s_loc)
    torch.testing.assert_close(out, e / 4)


# ------------------------------------------------------------------ methods
TINY = ["--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8",
        "--local_crops_number", "3", "--out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
        "--epochs", "2", "--overlap_size", "3", "3", "--sere_channel_sizes", "4", "2"]


def build(method, extra=()):
    return build_method(["--method", method, *TINY, *extra])


@pytest.mark.parametrize("method,extra", [("ibot_sere", ["--patch_out_dim", "32", "--drop_path", "0"]),
                                          ("dino_sere", ["--drop_path_rate", "0"])])
def test_sere_methods_reduce_the_loss_on_a_fixed_batch(method, extra):
    torch.manual_seed(0)
    m, args = build(method, extra)
    batch = transform_batch(m, args)
    assert len(batch["crops"]) == 5 and len(batch["grid_local"]) == 6

    def check(extra_log):
        assert {"loss_attn", "loss_attn_ffn"} <= set(extra_log)
    losses = train_on_fixed_batch(m, batch, 15, check_extra=check)
    assert losses[-1] < losses[0] - 0.05, losses


def test_ibot_sere_layout_weights_and_param_groups():
    torch.manual_seed(0)
    m, args = build("ibot_sere", ["--patch_out_dim", "32"])
    sd = m.student.state_dict()
    for prefix in ("channel_sere", "pixel_sere", "channel_sere_local", "pixel_sere_local"):
        assert f"backbone.{prefix}.predictor.0.weight" in sd and f"backbone.{prefix}.projection.0.running_mean" in sd
    assert "backbone.masked_embed" in sd and set(m.criterion.state_dict()) == {"center", "center2", "center_accum",
                                                                             "center2_accum"}
    from ssvit.utils.params import has_batchnorm
    assert has_batchnorm(m.teacher)  # -> teacher saved with the 'module.' prefix, as SERE's DDP teacher
    # SERE decays biases (its utils.get_params_groups); only 1-D non-bias parameters are exempt
    decayed, free = m.param_groups(m.student)
    names = {id(p): n for n, p in m.student.named_parameters()}
    assert any(names[id(p)].endswith(".bias") for p in decayed["params"])
    assert all(p.ndim == 1 and not names[id(p)].endswith(".bias") for p in free["params"])
    # the combined loss weights: (4 - a - b)/2 * iBOT + a * pixel + b * channel
    m.alpha, m.beta = 0.2, 0.5
    torch.testing.assert_close(m.combine(torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)),
                               torch.tensor(2.0 * 1.65 + 0.6 + 2.5))


def test_local_heads_quirk_two_local_crops_use_global_heads():
    torch.manual_seed(0)
    m, args = build("dino_sere", ["--local_crops_number", "2"])
    bb = m.student.backbone
    calls = []
    for name in ("channel_sere", "channel_sere_local"):
        getattr(bb, name).register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
    m.student([torch.randn(2, 3, 8, 8)] * 2, teacher=False)
    assert calls == ["channel_sere"]
    calls.clear()
    m.student([torch.randn(2, 3, 8, 8)] * 3, teacher=False)
    assert calls == ["channel_sere_local"]


def test_sere_rejects_non_vit_and_three_global_crops():
    with pytest.raises(ValueError, match="ViT"):
        build("ibot_sere", ["--arch", "resnet50", "--patch_out_dim", "32"])
    with pytest.raises(ValueError, match="2 global"):
        build("ibot_sere", ["--global_crops_number", "3", "--patch_out_dim", "32"])


SEED_VIT_S = ("--arch vit_small --teacher_temp 0.07 --warmup_teacher_temp_epochs 30 --norm_last_layer false "
              "--epochs 100 --shared_head true --out_dim 8192 --local_crops_number 10 --global_crops_scale 0.40 1 "
              "--local_crops_scale 0.05 0.40 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 --batch_size_per_gpu 128 "
              "--num_workers 6 --saveckp_freq 10 --clip_grad 0.3 --alpha 0.2 --beta 0.5")
SEED_VIT_B = ("--arch vit_base --teacher_temp 0.07 --teacher_patch_temp 0.07 --warmup_teacher_temp 0.04 "
              "--warmup_teacher_patch_temp 0.04 --warmup_teacher_temp_epochs 50 --norm_last_layer true "
              "--warmup_epochs 10 --epochs 100 --lr 0.00075 --min_lr 2e-6 --weight_decay 0.04 "
              "--weight_decay_end 0.4 --shared_head true --shared_head_teacher true --out_dim 8192 "
              "--patch_out_dim 8192 --local_crops_number 10 --global_crops_scale 0.32 1 --local_crops_scale 0.05 "
              "0.32 --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 --pred_shape block --batch_size_per_gpu 128 "
              "--num_workers 6 --saveckp_freq 10 --freeze_last_layer 3 --clip_grad 0.3 --use_fp16 true "
              "--alpha 0.2 --beta 0.5")


@pytest.mark.parametrize("cmd,arch,dim", [(SEED_VIT_S, "vit_small", 384), (SEED_VIT_B, "vit_base", 768)])
def test_seed_sere_commands_parse_and_take_one_step(cmd, arch, dim, tmp_path):
    """The README commands of MCG-NKU/SERE, unchanged, plus only where the data comes from and a
    one-step budget (the batch is shrunk to 2 images to fit a CPU test)."""
    from ssvit.utils.checkpoint import load_checkpoint
    flags = ["--method", "ibot_sere", *cmd.split(), "--output_dir", str(tmp_path), "--dataset", "synthetic",
             "--synthetic_size", "2", "--batch_size_per_gpu", "2", "--num_workers", "0", "--max_iters", "1",
             "--tensorboard", "false"]
    args = parse_with_config(get_args_parser(flags), flags)
    assert (args.alpha, args.beta, args.clip_grad, args.out_dim, args.local_crops_number) == (0.2, 0.5, 0.3, 8192, 10)
    torch.manual_seed(0)
    trainer = make_trainer(args)
    assert trainer.method.student.backbone.embed_dim == dim
    trainer.fit()
    ck = load_checkpoint(str(tmp_path / "checkpoint.pth"))
    assert ck["method"] == "ibot_sere" and "module.backbone.pixel_sere_local.predictor.0.weight" in ck["teacher"]
    assert ck["ibot_loss"]["center"].abs().sum() > 0  # one loss call happened
    # the SERE teacher (module.-prefixed, with relation heads) loads into a plain ViT for evaluation
    from ssvit.models.loading import load_pretrained_weights
    from ssvit.models import create_backbone
    vit = create_backbone(arch, patch_size=16)
    load_pretrained_weights(vit, str(tmp_path / "checkpoint.pth"), "teacher", arch)
    assert torch.equal(vit.cls_token, trainer.method.teacher.backbone.cls_token)
