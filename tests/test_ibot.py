"""iBOT: mask generator, mask-token substitution, iBOTHead, iBOTLoss numerics, the method, checkpoints."""
import argparse
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssvit.cli.pretrain import get_args_parser, make_trainer
from ssvit.config import parse_with_config
from ssvit.data.masking import MaskedCrops, MaskGenerator
from ssvit.models.loading import load_pretrained_weights
from ssvit.utils.checkpoint import save_atomic
from method_helpers import build_method, train_on_fixed_batch
from ssvit.models import create_backbone
from ssvit.models.ibot_head import iBOTHead
from ssvit.objectives import iBOTLoss
from ssvit.objectives.schedules import patch_temp_schedule


# ------------------------------------------------------------------ mask generator
def _components(m):
    """Number of 4-connected components of True cells."""
    seen, n = np.zeros_like(m), 0
    for r0, c0 in zip(*np.where(m)):
        if seen[r0, c0]:
            continue
        n += 1
        stack = [(r0, c0)]
        while stack:
            r, c = stack.pop()
            if 0 <= r < m.shape[0] and 0 <= c < m.shape[1] and m[r, c] and not seen[r, c]:
                seen[r, c] = True
                stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    return n


def test_block_masks_are_few_contiguous_blocks_unlike_random_masks():
    random.seed(0)
    np.random.seed(0)
    block, rand = MaskGenerator(pred_ratio=0.3), MaskGenerator(pred_ratio=0.3, pred_shape="rand")
    nb = np.mean([_components(block(14, 14)) for _ in range(100)])
    nr = np.mean([_components(rand(14, 14)) for _ in range(100)])
    assert nb <= 3 and nr > 15, (nb, nr)
    # the first block of an empty mask is one filled rectangle: with high < low the draw lies in
    # [high, low] and is accepted only when it fits entirely (h*w <= high)
    for _ in range(50):
        m = block.block_mask(14, 14, high=3.0)
        rows, cols = np.where(m)
        if len(rows):
            assert m[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1].all()


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_block_masks_never_exceed_and_nearly_reach_the_ratio(ratio):
    random.seed(1)
    gen = MaskGenerator(pred_ratio=ratio)
    counts = np.array([gen(14, 14).sum() for _ in range(200)])
    high = ratio * 196
    assert counts.max() <= high  # delta <= max_mask_patches keeps the total under `high`
    assert counts.mean() > 0.85 * high


def test_rand_masks_have_exactly_int_high_cells():
    np.random.seed(0)
    gen = MaskGenerator(pred_ratio=0.3, pred_shape="rand")
    for _ in range(10):
        m = gen(7, 9)
        assert m.shape == (7, 9) and m.dtype == bool and m.sum() == int(0.3 * 63)


def test_ratio_list_with_variance_matches_recommended_recipe():
    random.seed(2)
    gen = MaskGenerator(pred_ratio=[0, 0.3], pred_ratio_var=[0, 0.2])
    ratios = np.array([gen.get_pred_ratio() for _ in range(2000)])
    zero = ratios == 0
    assert 0.45 < zero.mean() < 0.55
    assert ratios[~zero].min() >= 0.1 and ratios[~zero].max() <= 0.5
    # a scalar variance is broadcast to the list
    assert MaskGenerator(pred_ratio=[0.2, 0.4], pred_ratio_var=0.1).pred_ratio_var == [0.1, 0.1]
    assert MaskGenerator(pred_ratio=[0.3], pred_ratio_var=[0]).pred_ratio == 0.3


def test_pred_start_epoch_disables_masking_before_it():
    gen = MaskGenerator(pred_ratio=0.5, pred_start_epoch=3)
    gen.set_epoch(2)
    assert not gen(8, 8).any()
    gen.set_epoch(3)
    assert gen(8, 8).any()


@pytest.mark.parametrize("kw", [dict(pred_ratio=0.2, pred_ratio_var=0.3), dict(pred_shape="square"),
                                dict(pred_ratio=[0.1, 0.2], pred_ratio_var=[0.1, 0.1, 0.1])])
def test_bad_mask_settings_are_clear_errors(kw):
    with pytest.raises(ValueError):
        MaskGenerator(**kw)


def test_masked_crops_masks_only_global_crops_on_the_patch_grid():
    random.seed(0)
    t = MaskedCrops(lambda img: [torch.zeros(3, 32, 32), torch.zeros(3, 32, 32), torch.zeros(3, 16, 16)],
                    MaskGenerator(0.3), patch_size=4, n_global=2)
    crops, masks = t(None)
    assert len(crops) == 3 and len(masks) == 2 and all(m.shape == (8, 8) for m in masks)


# ------------------------------------------------------------------ mask token
def test_mask_token_replaces_masked_patch_embeddings_before_pos_embed():
    torch.manual_seed(0)
    vit = create_backbone("vit_pico", patch_size=4, img_size=16, masked_im_modeling=True)
    with torch.no_grad():
        vit.masked_embed.normal_()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 3, 0] = True
    tok = vit.prepare_tokens(x, mask)
    plain = vit.prepare_tokens(x)
    pos = vit.pos_embed[0, 1:]
    idx0, idx1 = 1 * 4 + 2, 3 * 4 + 0
    torch.testing.assert_close(tok[0, 1 + idx0], vit.masked_embed[0] + pos[idx0])
    torch.testing.assert_close(tok[1, 1 + idx1], vit.masked_embed[0] + pos[idx1])
    keep = ~mask.flatten(1)
    torch.testing.assert_close(tok[:, 1:][keep], plain[:, 1:][keep])
    torch.testing.assert_close(tok[:, 0], plain[:, 0])
    # the mask token receives gradient only through masked positions
    vit(x, mask=mask).sum().backward()
    assert vit.masked_embed.grad is not None and vit.masked_embed.grad.abs().sum() > 0
    # a backbone without masked image modelling ignores masks and has no mask token
    t = create_backbone("vit_pico", patch_size=4, img_size=16)
    assert t.masked_embed is None and torch.equal(t.prepare_tokens(x, mask), t.prepare_tokens(x))
    assert "masked_embed" in vit.state_dict() and "masked_embed" not in t.state_dict()


def test_return_all_tokens():
    vit = create_backbone("vit_pico", patch_size=4, img_size=16, return_all_tokens=True)
    x = torch.randn(2, 3, 16, 16)
    assert vit(x).shape == (2, 17, 96) and vit(x, return_all_tokens=False).shape == (2, 96)


# ------------------------------------------------------------------ head
def test_ibot_head_outputs_keys_and_shared_head():
    torch.manual_seed(0)
    h = iBOTHead(16, 32, patch_out_dim=24, hidden_dim=20, bottleneck_dim=8)
    cls, patch = h(torch.randn(3, 5, 16))
    assert cls.shape == (3, 32) and patch.shape == (3, 4, 24)
    torch.testing.assert_close(h(torch.randn(3, 16)).shape, torch.Size([3, 32]))
    assert list(h.state_dict()) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight",
                                    "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v",
                                    "last_layer2.weight_g", "last_layer2.weight_v"]
    assert not h.last_layer.weight_g.requires_grad and not h.last_layer2.weight_g.requires_grad
    # CLS row of the 3-D path equals the 2-D path on the CLS token
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(h(x)[0], h(x[:, 0]))
    shared = iBOTHead(16, 32, patch_out_dim=24, hidden_dim=20, bottleneck_dim=8, shared_head=True)
    assert shared.last_layer2 is shared.last_layer
    assert {"last_layer.weight_v", "last_layer2.weight_v"} <= set(shared.state_dict())
    assert "last_layer2.weight_v" not in dict(shared.named_parameters())
    assert shared(torch.randn(2, 5, 16))[1].shape == (2, 4, 32)


def test_ibot_head_norm_is_one_shared_instance_and_bn_handles_tokens():
    h = iBOTHead(16, 32, patch_out_dim=24, norm="bn", hidden_dim=20, bottleneck_dim=8, nlayers=3)
    assert h.mlp[1] is h.mlp[4]  # QUIRK: one norm instance after every hidden layer
    assert [k for k in h.state_dict() if k.startswith("mlp.")][:4] == ["mlp.0.weight", "mlp.0.bias", "mlp.1.weight",
                                                                      "mlp.1.bias"]
    cls, patch = h(torch.randn(4, 6, 16))
    assert cls.shape == (4, 32) and patch.shape == (4, 5, 24)
    with pytest.raises(ValueError, match="unknown norm"):
        iBOTHead(16, 32, norm="gn")


def test_weightnorm_parameter_order_is_legacy_g_then_v():
    legacy = torch.nn.utils.weight_norm(torch.nn.Linear(4, 3, bias=False))
    ours = iBOTHead(8, 3, patch_out_dim=3, hidden_dim=8, bottleneck_dim=4).last_layer
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in legacy.named_parameters()]


# ------------------------------------------------------------------ loss
def _manual_ibot(s_cls, s_patch, t_cls, t_patch, masks, center, center2, temp, temp2, ng, lam1=1.0, lam2=1.0):
    """Literal per-element transcription of the formula in the spec (objectives.md 5.2)."""
    ncrops = s_cls.shape[0] // (t_cls.shape[0] // ng)
    B = t_cls.shape[0] // ng
    L1, n1, L2, n2 = 0.0, 0, 0.0, 0
    for q in range(ng):
        for v in range(ncrops):
            if v == q:
                per_img = []
                for b in range(B):
                    tp = torch.softmax((t_patch[q * B + b] - center2[0]) / temp2, -1)
                    ls = torch.log_softmax(s_patch[v * B + b] / 0.1, -1)
                    ce = -(tp * ls).sum(-1)
                    m = masks[v][b].flatten().float()
                    per_img.append((ce * m).sum() / max(m.sum().item(), 1.0))
                L2 += sum(per_img) / B
                n2 += 1
            else:
                terms = []
                for b in range(B):
                    tq = torch.softmax((t_cls[q * B + b] - center[0]) / temp, -1)
                    terms.append(-(tq * torch.log_softmax(s_cls[v * B + b] / 0.1, -1)).sum())
                L1 += sum(terms) / B
                n1 += 1
    return L1 / n1 * lam1, L2 / n2 * lam2


def test_ibot_loss_matches_hand_computation_and_updates_centers():
    torch.manual_seed(0)
    B, N, K, K2, ng, nl = 3, 4, 5, 6, 2, 1
    loss = iBOTLoss(K, K2, ng, nl, 0.04, 0.07, 0.03, 0.06, 2, 4, lambda1=0.7, lambda2=1.3)
    loss.center.normal_()
    loss.center2.normal_()
    c0, c20 = loss.center.clone(), loss.center2.clone()
    s_cls, s_patch = torch.randn(ng * B, K), torch.randn(ng * B, N, K2)
    t_cls, t_patch = torch.randn(ng * B, K), torch.randn(ng * B, N, K2)
    s_local = torch.randn(nl * B, K)
    masks = [torch.rand(B, 2, 2) > 0.5 for _ in range(ng + nl)]
    masks[0][1] = False  # an image with an empty mask contributes 0 (QUIRK)
    epoch = 1
    out = loss((s_cls, s_patch), (t_cls, t_patch), s_local, masks, epoch)
    temp, temp2 = loss.teacher_temp_schedule[epoch], loss.teacher_temp2_schedule[epoch]
    assert temp == pytest.approx(0.07) and temp2 == pytest.approx(0.06)
    e1, e2 = _manual_ibot(torch.cat([s_cls, s_local]), s_patch, t_cls, t_patch, masks, c0, c20, temp, temp2, ng,
                          0.7, 1.3)
    torch.testing.assert_close(out["cls"], e1)
    torch.testing.assert_close(out["patch"], e2)
    torch.testing.assert_close(out["loss"], e1 + e2)
    torch.testing.assert_close(loss.center, 0.9 * c0 + 0.1 * t_cls.mean(0, keepdim=True))
    torch.testing.assert_close(loss.center2, 0.9 * c20 + 0.1 * t_patch.mean(1).mean(0).view(1, 1, K2))
    assert loss.center2.shape == (1, 1, K2)
    assert set(loss.state_dict()) == {"center", "center2"}


def test_ibot_loss_gradient_is_softmax_minus_target_over_temperature():
    torch.manual_seed(1)
    B, K = 2, 4
    loss = iBOTLoss(K, K, 2, 0, 0.04, 0.04, 0.04, 0.04, 0, 1)
    s_cls = torch.randn(2 * B, K, requires_grad=True)
    s_patch = torch.randn(2 * B, 1, K)
    t_cls, t_patch = torch.randn(2 * B, K), torch.randn(2 * B, 1, K)
    masks = [torch.zeros(B, 1, 1, dtype=torch.bool)] * 2
    out = loss((s_cls, s_patch), (t_cls, t_patch), None, masks, 0)
    out["cls"].backward()
    t = torch.softmax(t_cls / 0.04, -1).chunk(2)
    # crop 0 is predicted from teacher crop 1 and vice versa; 2 terms, each a batch mean
    expected = torch.cat([(torch.softmax(s_cls[:B] / 0.1, -1) - t[1]), (torch.softmax(s_cls[B:] / 0.1, -1) - t[0])])
    torch.testing.assert_close(s_cls.grad, expected / 0.1 / B / 2)
    assert out["patch"].item() == 0.0  # empty masks


def test_patch_temperature_schedule_with_mim_start_epoch():
    s = patch_temp_schedule(0.04, 0.07, 3, 8, mim_start_epoch=2)
    np.testing.assert_allclose(s, [0.04, 0.04, 0.04, 0.055, 0.07, 0.07, 0.07, 0.07])
    np.testing.assert_allclose(patch_temp_schedule(0.04, 0.07, 2, 3), [0.04, 0.07, 0.07])


def test_accumulated_centers_move_once_per_accum_window():
    torch.manual_seed(0)
    B, N, K = 2, 3, 4
    loss = iBOTLoss(K, K, 2, 0, 0.04, 0.04, 0.04, 0.07, 0, 2, accum_iter=2)
    assert {"center_accum", "center2_accum"} <= set(loss.state_dict())
    ts = [(torch.randn(2 * B, K), torch.randn(2 * B, N, K)) for _ in range(2)]
    s = (torch.randn(2 * B, K), torch.randn(2 * B, N, K))
    masks = [torch.ones(B, 1, N, dtype=torch.bool)] * 2
    loss(s, ts[0], None, masks, 0, it=0)
    assert torch.all(loss.center == 0)
    loss(s, ts[1], None, masks, 0, it=1)
    mean_cls = torch.cat([ts[0][0], ts[1][0]]).mean(0, keepdim=True)
    mean_patch = torch.cat([ts[0][1], ts[1][1]]).mean(1).mean(0).view(1, 1, K)
    torch.testing.assert_close(loss.center, 0.1 * mean_cls)
    torch.testing.assert_close(loss.center2, 0.1 * mean_patch)
    assert torch.all(loss.center_accum == 0)


# ------------------------------------------------------------------ method
FLAGS = ["--method", "ibot", "--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16",
         "--local_crops_size", "8", "--local_crops_number", "2", "--out_dim", "32", "--patch_out_dim", "32",
         "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--epochs", "2", "--drop_path", "0"]


def build(flags=FLAGS):
    return build_method(flags)


def test_ibot_defaults_are_main_ibot_defaults():
    args = parse_with_config(get_args_parser(["--method", "ibot"]), ["--method", "ibot"])
    assert (args.out_dim, args.patch_out_dim, args.warmup_teacher_temp_epochs, args.batch_size_per_gpu) == \
        (8192, 8192, 30, 128)
    assert tuple(args.global_crops_scale) == (0.14, 1.0) and args.local_crops_number == 0
    assert (args.shared_head, args.shared_head_teacher, args.teacher_patch_temp, args.pred_ratio) == \
        (False, True, 0.07, 0.3)
    assert args.saveckp_freq == 40 and args.drop_path_rate == 0.1 and args.pred_shape == "block"
    args = parse_with_config(get_args_parser(["--method", "ibot"]), ["--method", "ibot", "--drop_path", "0.2",
                                                                     "--pred_ratio", "0", "0.3"])
    assert args.drop_path_rate == 0.2 and args.pred_ratio == [0.0, 0.3]


def test_teacher_init_quirk_with_shared_teacher_head():
    torch.manual_seed(0)
    m, _ = build()
    th, sh = m.teacher.head, m.student.head
    assert th.last_layer2 is th.last_layer and sh.last_layer2 is not sh.last_layer
    # the teacher's single prototype layer starts as the student's *patch* prototypes
    assert torch.equal(th.last_layer.weight_v, sh.last_layer2.weight_v)
    assert not torch.equal(th.last_layer.weight_v, sh.last_layer.weight_v)
    assert "masked_embed" not in dict(m.teacher.backbone.named_parameters())
    # EMA pairs: common names only (student's last_layer2 and masked_embed have no teacher twin)
    t_params, _ = m.ema_pairs()
    assert len(t_params) == len(list(m.teacher.parameters()))


def test_ibot_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    m, args = build()
    B = 8
    crops = [torch.randn(B, 3, 16, 16) for _ in range(2)] + [torch.randn(B, 3, 8, 8) for _ in range(2)]
    gen = MaskGenerator(0.3)
    random.seed(0)
    masks = [torch.from_numpy(np.stack([gen(4, 4) for _ in range(B)])) for _ in range(2)]

    def check(extra):
        assert {"cls", "patch", "acc"} <= set(extra) and 0 <= extra["acc"] <= 1
    losses = train_on_fixed_batch(m, (crops, masks), 20, check_extra=check)
    assert losses[-1] < losses[0] - 0.05, losses


def test_bad_ibot_flags_are_clear_errors():
    with pytest.raises(ValueError, match="patch_out_dim"):
        build(FLAGS + ["--patch_out_dim", "16"])
    with pytest.raises(ValueError, match="ratio"):
        build(FLAGS + ["--pred_ratio", "0.1", "--pred_ratio_var", "0.3"])
    # a multi-stage backbone has no mask token: refused up front, not a crash at the first step
    with pytest.raises(ValueError, match="--arch swin_tiny takes no patch masks"):
        build(FLAGS + ["--arch", "swin_tiny"])


# ------------------------------------------------------------------ checkpoints
def _original_ibot_checkpoint(m, args) -> dict:
    """A checkpoint laid out as bytedance/ibot main_ibot.py saves it (backbones.md 7.1)."""
    return {"student": {f"module.{k}": v for k, v in m.student.state_dict().items()},
            "teacher": dict(m.teacher.state_dict()),
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
            "args": argparse.Namespace(arch="vit_small", out_dim=8192), "ibot_loss": m.criterion.state_dict()}


def test_original_ibot_full_checkpoint_and_backbone_file_load_for_evaluation(tmp_path):
    torch.manual_seed(0)
    m, args = build()
    with torch.no_grad():
        for p in m.teacher.backbone.parameters():
            p.add_(torch.randn_like(p))
    ck = _original_ibot_checkpoint(m, args)
    assert "module.backbone.masked_embed" in ck["student"] and "head.last_layer2.weight_v" in ck["teacher"]
    full = tmp_path / "checkpoint.pth"
    save_atomic(ck, str(full))
    for key, src in (("teacher", m.teacher.backbone), ("student", m.student.backbone)):
        target = create_backbone("vit_pico", patch_size=4, img_size=16)
        load_pretrained_weights(target, str(full), key, "vit_pico")
        for k, v in target.state_dict().items():
            assert torch.equal(v, src.state_dict()[k]), k
    # extract_backbone_weights.py output: {'state_dict': backbone keys}; found with the default key
    bfile = tmp_path / "checkpoint_teacher.pth"
    torch.save({"state_dict": {k: v for k, v in m.teacher.backbone.state_dict().items()}}, bfile)
    target = create_backbone("vit_pico", patch_size=4, img_size=16)
    load_pretrained_weights(target, str(bfile), "teacher", "vit_pico")
    assert torch.equal(target.pos_embed, m.teacher.backbone.pos_embed)


def test_eval_knn_cli_loads_ibot_checkpoint_with_teacher_key(tmp_path):
    from ssvit.cli import knn as eval_knn
    torch.manual_seed(0)
    m, args = build()
    path = tmp_path / "ibot.pth"
    save_atomic(_original_ibot_checkpoint(m, args), str(path))
    res = eval_knn.main(["--arch", "vit_pico", "--patch_size", "4", "--pretrained_weights", str(path),
                         "--checkpoint_key", "teacher", "--dataset", "synthetic", "--synthetic_size", "40",
                         "--eval_size", "16", "--nb_knn", "5", "--num_workers", "0", "--batch_size_per_gpu", "20"])
    top1, _ = res[5]
    assert 0 <= top1 <= 100 and not math.isnan(top1)


def test_accum_iter_two_half_batches_equal_one_full_batch(tmp_path):
    """--accum_iter 2 with batch 4 takes the same first optimizer step as batch 8 (same samples,
    same lr by the effective-batch scaling, centers frozen within the accumulation window)."""
    import warnings

    from ssvit.utils.checkpoint import load_checkpoint
    base = ["--method", "ibot", "--dataset", "synthetic", "--synthetic_size", "16", "--arch", "vit_pico",
            "--patch_size", "4", "--global_crops_size", "16", "--local_crops_size", "8", "--local_crops_number", "1",
            "--out_dim", "32", "--patch_out_dim", "32", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
            "--epochs", "1", "--warmup_epochs", "0", "--drop_path", "0", "--num_workers", "0", "--tensorboard",
            "false", "--lr", "50", "--freeze_last_layer", "0", "--optimizer", "sgd"]  # SGD: step linear in grad
    ckpts, init = [], None
    for name, extra in (("full", ["--batch_size_per_gpu", "8", "--max_iters", "1"]),
                        ("accum", ["--batch_size_per_gpu", "4", "--accum_iter", "2", "--max_iters", "2"])):
        flags = base + extra + ["--output_dir", str(tmp_path / name)]
        args = parse_with_config(get_args_parser(flags), flags)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = make_trainer(args)
            if init is None:
                init = {k: v.clone() for k, v in trainer.method.student.state_dict().items()}
            trainer.fit()
        ckpts.append(load_checkpoint(str(tmp_path / name / "checkpoint.pth")))
    a, b = ckpts
    assert a["iter_in_epoch"] == 1 and b["iter_in_epoch"] == 2
    moved = 0
    for k, v in a["student"].items():
        torch.testing.assert_close(v, b["student"][k], rtol=1e-4, atol=1e-6)
        moved += not torch.allclose(v, init[k.removeprefix("module.")], rtol=1e-4, atol=1e-6)
    assert moved > 10  # the step is visible at this tolerance
    torch.testing.assert_close(a["ibot_loss"]["center"], b["ibot_loss"]["center"])
    assert "center_accum" in b["ibot_loss"] and "center_accum" not in a["ibot_loss"]
