"""SiT-v1 (ssvit/models/sit.py, ssvit/objectives/sit.py, ssvit/methods/sit.py): NT-Xent and the
uncertainty weighting against hand computations, rotation directions, the corruption boxes, the
model's original layout and its checkpoint filter, timm's per-epoch schedule, training on a fixed
batch, the seed README's flags, exact resume and loading a SiT checkpoint for k-NN."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from method_helpers import build_method, train_on_fixed_batch
from ssvit.models import create_backbone
from ssvit.objectives.sit import (MTL_loss, ContrastiveLoss, LearnedLoss, RandomRotation, distortImages,
                                  drop_rand_patches, gaussian_blur2d, gaussian_kernel1d, rgb2gray_patch,
                                  smooth_patch)
from ssvit.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_nt_xent_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    z = np.concatenate([a.numpy() / np.linalg.norm(a.numpy(), axis=1, keepdims=True),
                        b.numpy() / np.linalg.norm(b.numpy(), axis=1, keepdims=True)])
    S = z @ z.T
    T, B, total = 0.5, 3, 0.0
    for k in range(2 * B):
        pos = S[k, (k + B) % (2 * B)]
        denom = sum(np.exp(S[k, l] / T) for l in range(2 * B) if l != k)  # the positive is in it
        total += -np.log(np.exp(pos / T) / denom)
    assert ContrastiveLoss(3, device="cuda")(a, b).item() == pytest.approx(total / (2 * B), rel=1e-5)
    with pytest.raises(ValueError, match="built for batches of 3"):
        ContrastiveLoss(3)(a[:2], b[:2])


def test_uncertainty_weighting_and_its_gradient():
    torch.manual_seed(0)
    crit = MTL_loss("cpu", 2)
    rot_p, rots = torch.randn(4, 4), torch.tensor([0, 1, 2, 3])
    c1, c2 = torch.randn(2, 8), torch.randn(2, 8)
    rec, clean = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    s = [torch.tensor([v], requires_grad=True) for v in (0.3, -0.2, 0.7)]
    total, (lr_, lc, lrec) = crit(rot_p, rots, c1, c2, rec, clean, *s)
    L = [F.cross_entropy(rot_p, rots), ContrastiveLoss(2)(c1, c2), (rec - clean).abs().mean()]
    adj = (1.0, 1.0, 0.5)
    expected = sum(math.exp(-sv.item() * a) * l.item() + 0.5 * sv.item() for sv, a, l in zip(s, adj, L))
    assert total.shape == () and total.item() == pytest.approx(expected, rel=1e-6)  # the original's is (1,)
    assert [lr_.item(), lc.item(), lrec.item()] == pytest.approx([l.item() for l in L], rel=1e-6)
    total.backward()
    for sv, a, l in zip(s, adj, L):  # d/ds = -a exp(-a s) L + 0.5
        assert sv.grad.item() == pytest.approx(-a * math.exp(-a * sv.item()) * l.item() + 0.5, rel=1e-5)
    assert LearnedLoss("L1").adj == 0.5 and LearnedLoss("CrossEntropy").adj == 1.0


def test_rotation_directions():
    x = torch.tensor([[[1, 2], [3, 4]]])
    assert RandomRotation(x, 0)[0].tolist() == [[[1, 2], [3, 4]]]
    assert RandomRotation(x, 1)[0].tolist() == [[[3, 1], [4, 2]]]  # 90 degrees clockwise
    assert RandomRotation(x, 2)[0].tolist() == [[[4, 3], [2, 1]]]
    assert RandomRotation(x, 3)[0].tolist() == [[[2, 4], [1, 3]]]  # 90 degrees counter-clockwise
    draws = {RandomRotation(x, rng=np.random.RandomState(s))[1] for s in range(40)}
    assert draws == {0, 1, 2, 3}


def _changed(a, b):
    return (a != b).any(dim=0)


def test_corruption_boxes_lie_inside_the_image_and_cover_the_target():
    H = W = 40
    for seed in range(20):
        x = torch.randn(3, H, W)
        rng = np.random.RandomState(seed)
        y = rgb2gray_patch(x.clone(), rng=rng)
        m = _changed(x, y)
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        box = y[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert torch.allclose(box[0], box[1]) and torch.allclose(box[1], box[2])  # grey inside one box
        assert m.sum() == len(rows) * len(cols)  # exactly one rectangle changed
        # noise boxes: the summed areas reach U(0, 0.3) * H * W; each box at least tolr wide
        target = np.random.RandomState(seed).uniform(0, 0.3) * H * W
        z = drop_rand_patches(x.clone(), rng=np.random.RandomState(seed), generator=torch.Generator().manual_seed(0))
        changed = _changed(x, z).sum().item()
        assert changed <= 0.3 * H * W + (H * 0.25) ** 2 and (changed > 0 or target < 4)
        # copied boxes carry the other image's pixels
        other = torch.randn(3, H, W)
        c = drop_rand_patches(x.clone(), other, rng=np.random.RandomState(seed))
        mc = _changed(x, c)
        assert torch.equal(c[:, mc], other[:, mc])
        s = smooth_patch(x.clone(), rng=np.random.RandomState(seed))
        assert s.shape == x.shape and torch.isfinite(s).all()


def test_gaussian_kernel_is_kornias_and_blur_preserves_constants():
    k = gaussian_kernel1d(3, 1.0)
    e = math.exp(-0.5)
    assert k.tolist() == pytest.approx([e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])
    const = torch.full((1, 3, 6, 9), 2.5)
    assert torch.allclose(gaussian_blur2d(const, 5, 1.3), const)
    tiny = torch.randn(1, 3, 1, 4)  # smaller than the kernel: replicate padding, no error
    assert gaussian_blur2d(tiny, 15, 2.0).shape == tiny.shape


def test_distort_images_is_reproducible_and_leaves_the_clean_batch_alone():
    x = torch.randn(4, 3, 32, 32)
    ref = x.clone()
    a = distortImages(x, rng=np.random.RandomState(3), generator=torch.Generator().manual_seed(3))
    b = distortImages(x, rng=np.random.RandomState(3), generator=torch.Generator().manual_seed(3))
    c = distortImages(x, rng=np.random.RandomState(4), generator=torch.Generator().manual_seed(4))
    assert torch.equal(x, ref) and torch.equal(a, b) and not torch.equal(a, c)
    assert all(_changed(x[i], a[i]).any() for i in range(4))


def test_model_has_the_original_layout_and_outputs():
    with torch.device("meta"):
        base = create_backbone("SiT_base_patch16_224", training_mode="SSL")
    sd = base.state_dict()
    assert len(sd) == 160 and sd["pos_embed"].shape == (1, 198, 768) and sd["convTrans.weight"].shape == (768, 3, 16, 16)
    assert sd["rot_head.weight"].shape == (4, 768) and sd["contrastive_head.weight"].shape == (512, 768)
    assert all(sd[k].shape == (1,) for k in ("rot_w", "contrastive_w", "recons_w"))
    with torch.device("meta"):
        ft = create_backbone("sit_base", training_mode="finetune", num_classes=10, representation_size=1024)
    fsd = ft.state_dict()
    assert fsd["pre_logits_rot.fc.weight"].shape == (1024, 768) and fsd["rot_head.weight"].shape == (10, 1024)
    assert "convTrans.weight" not in fsd and "rot_w" not in fsd
    torch.manual_seed(0)
    m = create_backbone("sit_pico", img_size=16, training_mode="SSL")
    x = torch.randn(2, 3, 16, 16)
    out = m(x)
    assert [tuple(o.shape) for o in out] == [(2, 4), (2, 512), (2, 3, 16, 16), (1,), (1,), (1,)]
    tokens = m.forward_tokens(x)
    assert tokens.shape == (2, 2 + 16, 96)
    torch.testing.assert_close(out[0], m.rot_head(tokens[:, 0]))
    torch.testing.assert_close(out[1], m.contrastive_head(tokens[:, 1]))


def test_checkpoint_filter_drops_mismatched_heads_and_resizes_pos_embed_keeping_two_tokens():
    torch.manual_seed(0)
    ssl = create_backbone("sit_pico", img_size=16, training_mode="SSL")
    ft = create_backbone("sit_pico", img_size=32, training_mode="finetune", num_classes=10)
    sd = ft.checkpoint_filter(ssl.state_dict())
    assert not any(k.startswith(("rot_head", "contrastive_head", "convTrans", "rot_w")) for k in sd)
    pe = sd["pos_embed"]
    assert pe.shape == (1, 2 + 64, 96) and torch.equal(pe[:, :2], ssl.pos_embed[:, :2])
    grid = ssl.pos_embed[:, 2:].reshape(1, 4, 4, 96).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    torch.testing.assert_close(pe[:, 2:], ref)
    missing, _ = ft.load_state_dict(sd, strict=False)
    assert set(missing) == {"rot_head.weight", "rot_head.bias", "contrastive_head.weight", "contrastive_head.bias"}


def test_lr_schedule_is_timms_cosine_stepped_after_each_epoch():
    from timm.scheduler import CosineLRScheduler

    from ssvit.objectives.schedules import timm_cosine_per_epoch as sit_lr_per_epoch  # SiT-v1's lr per epoch
    for warmup in (3, 0):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = CosineLRScheduler(opt, t_initial=12, lr_min=1e-5, warmup_lr_init=1e-6, warmup_t=warmup,
                                  cycle_limit=1, t_in_epochs=True)
        expected = []
        for epoch in range(12):  # DeiT / SiT: train the epoch, then lr_scheduler.step(epoch)
            expected.append(opt.param_groups[0]["lr"])
            sched.step(epoch)
        ours = sit_lr_per_epoch(1e-3, 12, 1e-6, warmup, 1e-5)
        assert ours.tolist() == pytest.approx(expected, rel=1e-12), warmup
    assert sit_lr_per_epoch(1e-3, 12, 1e-6, 3, 1e-5)[:2].tolist() == [1e-6, 1e-6]


SIT = ["--method", "sit", "--arch", "sit_pico", "--patch_size", "4", "--input-size", "16", "--batch-size", "4",
       "--no-repeated-aug"]


def test_a_few_steps_lower_the_loss_and_the_weights_train_without_decay():
    torch.manual_seed(0)
    m, args = build_method(SIT + ["--drop-path", "0"])
    groups = m.param_groups(m.student)
    no_decay = {id(p) for p in groups[1]["params"]}
    for name in ("rot_w", "contrastive_w", "recons_w", "pos_embed", "rot_token", "contrastive_token", "norm.weight"):
        assert id(dict(m.student.named_parameters())[name]) in no_decay
    assert id(m.student.blocks[0].attn.qkv.weight) not in no_decay
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    batch = [x1, torch.tensor([0, 1, 2, 3]), x2, torch.tensor([3, 2, 1, 0])]
    before = m.student.rot_w.detach().clone()
    losses = train_on_fixed_batch(m, batch, steps=12, lr=2e-3)
    assert losses[-1] < losses[0] - 0.2, losses
    assert not torch.equal(before, m.student.rot_w.detach())


def _run(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)


def test_seed_readme_command_parses():
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    argv = ["--method", "sit", "--batch-size", "72", "--epochs", "501", "--min-lr", "5e-6", "--lr", "1e-3",
            "--training-mode", "SSL", "--data-set", "STL10", "--output", "checkpoints/SSL/STL10", "--validate-every", "10"]
    a = parse_with_config(get_args_parser(argv), argv)
    assert (a.batch_size_per_gpu, a.epochs, a.min_lr, a.lr, a.dataset, a.output_dir, a.val_freq) == \
        (72, 501, 5e-6, 1e-3, "stl10", "checkpoints/SSL/STL10", 10)
    assert (a.arch, a.weight_decay, a.clip_grad, a.model_ema, a.model_ema_decay, a.warmup_lr, a.drop_path_rate) == \
        ("sit_base", 0.05, 0.0, True, 0.99996, 1e-6, 0.1)
    assert a.repeated_aug is True


def test_exact_resume_and_the_checkpoint_loads_for_knn(tmp_path):
    flags = SIT + ["--data-set", "synthetic", "--synthetic_size", "32", "--epochs", "2", "--num_workers", "0",
                   "--tensorboard", "false", "--warmup-epochs", "1"]
    full, part = tmp_path / "full", tmp_path / "part"
    p = _run(flags + ["--output", str(full)])
    assert p.returncode == 0, p.stderr[-2000:]
    assert _run(flags + ["--max_iters", "3", "--output", str(part)]).returncode == 0
    p2 = _run(flags + ["--output", str(part)])
    assert p2.returncode == 0 and "Resumed from" in p2.stdout, p2.stderr[-2000:]
    a, b = load_checkpoint(str(full / "checkpoint.pth")), load_checkpoint(str(part / "checkpoint.pth"))
    assert "teacher" not in a and {"model_ema", "criterion"} <= set(a)
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    for k in a["model_ema"]:
        assert torch.equal(a["model_ema"][k], b["model_ema"][k]), k
    # k-NN features of the checkpoint (default key 'teacher' falls back to the only network)
    from ssvit.evaluation.knn import build_eval_backbone
    model = build_eval_backbone("sit_pico", 4, str(full / "checkpoint.pth"), "teacher")
    x = torch.randn(2, 3, 16, 16)
    ssl = create_backbone("sit_pico", img_size=16, training_mode="SSL")
    ssl.load_state_dict({k[len("module."):]: v for k, v in a["student"].items()})
    tokens = ssl.eval().forward_tokens(x)
    torch.testing.assert_close(model(x), torch.cat([tokens[:, 0], tokens[:, 1]], 1))


def test_ssl_losses_as_metrics_during_training_and_from_the_script(tmp_path):
    flags = SIT + ["--data-set", "synthetic", "--synthetic_size", "32", "--epochs", "1", "--num_workers", "0",
                   "--tensorboard", "false", "--warmup-epochs", "1", "--output", str(tmp_path / "run")]
    p = _run(flags)
    assert p.returncode == 0, p.stderr[-2000:]
    import json
    log = json.loads((tmp_path / "run" / "log.txt").read_text().splitlines()[-1])
    keys = {"val_loss", "val_acc1", "val_acc5", "val_contrastive_loss", "val_reconstruction_loss", "val_total_loss"}
    assert keys <= set(log) and log["val_acc5"] == 100.0 and 0 <= log["val_acc1"] <= 100
    assert (tmp_path / "run" / "reconstruction_samples" / "Test_epoch_0.png").is_file()
    script = [sys.executable, "-m", "ssvit", "ssl-losses", "--pretrained_weights",
              str(tmp_path / "run" / "checkpoint.pth"), "--arch", "sit_pico", "--patch_size", "4", "--input-size", "16",
              "--data-set", "synthetic", "--synthetic_size", "32", "--batch-size", "6", "--num_workers", "0"]
    outs = []
    for k in (1, 2):  # a fixed seed: two runs agree, and they equal the training run's validation
        q = subprocess.run(script + ["--output_dir", str(tmp_path / f"ev{k}")], capture_output=True, text=True,
                           env=ENV, cwd=ROOT, timeout=300)
        assert q.returncode == 0, q.stderr[-2000:]
        outs.append(json.loads((tmp_path / f"ev{k}" / "ssl_losses.json").read_text()))
    assert outs[0] == outs[1] and (tmp_path / "ev1" / "reconstruction.png").is_file()
    for k in ("loss", "acc1", "contrastive_loss", "reconstruction_loss", "total_loss"):
        assert outs[0][k] == pytest.approx(log[f"val_{k}"], rel=1e-5), k
    bad = subprocess.run(script[:-2] + ["--arch", "sit_tiny", "--output_dir", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _deit_rasampler(n, world, rank, epoch):
    """DeiT's RASampler (samplers.py at SiT 1aacd6a), re-typed from the spec for comparison."""
    g = torch.Generator()
    g.manual_seed(epoch)
    indices = torch.randperm(n, generator=g).tolist()
    num_samples = int(math.ceil(n * 3.0 / world))
    total = num_samples * world
    indices = [e for e in indices for _ in range(3)]
    indices += indices[:(total - len(indices))]
    indices = indices[rank:total:world]
    return indices[:int(math.floor(n // 256 * 256 / world))]


def test_repeated_augmentation_order_draws_and_resume_skip():
    from ssvit.data import RepeatedAugSampler
    from ssvit.data.datasets import TransformedDataset

    class Base:
        targets = list(range(600))

        def __len__(self):
            return 600

        def __getitem__(self, i):
            return i, 0
    ds = TransformedDataset(Base(), lambda img: torch.rand(1).item(), seed=0)
    for world, rank in ((1, 0), (3, 1), (4, 3)):
        s = RepeatedAugSampler(ds, num_replicas=world, rank=rank)
        s.set_epoch(5)
        items = list(s)
        assert [i for i, _ in items] == _deit_rasampler(600, world, rank, 5) and len(s) == s.num_samples
    s = RepeatedAugSampler(ds, 1, 0)
    s.set_epoch(2)
    items = list(s)
    assert len(items) == 512 and items[0][0] == items[1][0] == items[2][0] and [d for _, d in items[:3]] == [0, 1, 2]
    vals = [ds[it][0] for it in items[:3]]
    assert len(set(vals)) == 3 and ds[items[0]][0] == vals[0]  # three different, reproducible draws
    s.set_start(10)
    assert list(s) == items[10:]
    assert RepeatedAugSampler(TransformedDataset(type("B", (Base,), {"__len__": lambda self: 200})(), None),
                              1, 0).num_samples == 0


def test_repeated_aug_is_the_default_and_resumes_exactly(tmp_path):
    flags = [f for f in SIT if f != "--no-repeated-aug"] + [
        "--batch-size", "32", "--data-set", "synthetic", "--synthetic_size", "256", "--epochs", "1",
        "--num_workers", "0", "--tensorboard", "false", "--warmup-epochs", "1", "--validate-every", "5"]
    full, part = tmp_path / "full", tmp_path / "part"
    p = _run(flags + ["--output", str(full)])
    assert p.returncode == 0 and "Data loaded" in p.stdout, p.stderr[-2000:]
    assert _run(flags + ["--max_iters", "3", "--output", str(part)]).returncode == 0
    assert _run(flags + ["--output", str(part)]).returncode == 0
    a, b = load_checkpoint(str(full / "checkpoint.pth")), load_checkpoint(str(part / "checkpoint.pth"))
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    small = _run(flags[:-12] + ["--data-set", "synthetic", "--synthetic_size", "64", "--output", str(tmp_path / "s")])
    assert small.returncode == 2 and "--no-repeated-aug" in small.stderr and "Traceback" not in small.stderr


def test_finetune_mode_translates_the_seed_flags():
    from ssvit.methods.sit import finetune_argv, is_sit_finetune
    seed = ("--method sit --batch-size 120 --epochs 501 --lr 1e-3 --weight-decay 5e-4 --min-lr 5e-6 "
            "--training-mode finetune --validate-every 10 --SiT_LinearEvaluation 1 --data-set CIFAR100 "
            "--output out --no-model-ema --clip-grad None --pin-mem --representation-size 1024").split()
    assert is_sit_finetune(seed) and not is_sit_finetune(["--method", "sit"])
    from ssvit.cli.finetune import parse
    a = parse(finetune_argv(seed))
    assert (a.arch, a.batch_size_per_gpu, a.epochs, a.lr, a.weight_decay, a.weight_decay_end, a.min_lr, a.val_freq) == \
        ("sit_base", 120, 501, 5e-4, 5e-4, 5e-4, 5e-6, 10)  # lr per 512 images = blr per 256 / 2
    assert (a.sit_linear_evaluation, a.dataset, a.nb_classes, a.output_dir, a.model_ema, a.representation_size) == \
        (True, "cifar100", 100, "out", False, 1024)
    assert (a.lr_sched, a.layer_decay, a.repeated_aug, a.mixup, a.smoothing, a.finetune_clip_grad) == \
        ("timm_epoch", 1.0, True, 0.8, 0.1, 0.0)


def test_finetune_and_linear_evaluation_modes_from_an_ssl_checkpoint(tmp_path):
    pre = tmp_path / "pre"
    common = ["--arch", "sit_pico", "--patch_size", "4", "--input-size", "16", "--data-set", "synthetic",
              "--synthetic_size", "32", "--batch-size", "8", "--num_workers", "0", "--tensorboard", "false",
              "--no-repeated-aug", "--warmup-epochs", "1"]
    assert _run(["--method", "sit", "--epochs", "1", "--output", str(pre)] + common).returncode == 0
    ssl = load_checkpoint(str(pre / "checkpoint.pth"))["student"]
    for linear in ("1", "0"):
        out = tmp_path / f"ft{linear}"
        p = _run(["--method", "sit", "--training-mode", "finetune", "--SiT_LinearEvaluation", linear, "--epochs", "2",
                  "--finetune", str(pre / "checkpoint.pth"), "--output", str(out), "--lr", "1e-2",
                  "--mixup", "0", "--cutmix", "0"] + common)
        assert p.returncode == 0 and "Finetuning from" in p.stdout, p.stderr[-2000:]
        st = {k[len("module."):]: v for k, v in load_checkpoint(str(out / "checkpoint.pth"))["student"].items()}
        assert st["rot_head.weight"].shape == (10, 96) and "convTrans.weight" not in st
        same_blocks = torch.equal(st["blocks.0.attn.qkv.weight"], ssl["module.blocks.0.attn.qkv.weight"])
        assert same_blocks == (linear == "1")  # linear evaluation trains only the heads
        import json
        log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
        assert {"val_acc1", "val_acc5", "val_loss"} <= set(log[-1])


def test_finetune_evaluation_averages_the_two_heads_and_sums_their_losses():
    import argparse

    from ssvit.methods.finetune import Finetune

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x[:, :3], x[:, 3:]
    x = torch.tensor([[5.0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 9], [0, 0, 1, 9, 0, 0]])
    y = torch.tensor([0, 2, 2])
    ft = Finetune.__new__(Finetune)
    torch.nn.Module.__init__(ft)
    ft.args = argparse.Namespace(dist_eval=False)
    ft._val_loader, ft._val_size = [(x, y)], 3
    stats = ft.evaluate(TwoHeads())
    mean = (x[:, :3] + x[:, 3:]) / 2  # predictions 0, 2, 0 -> 2 of 3
    assert stats["acc1"] == pytest.approx(200 / 3)
    assert stats["loss"] == pytest.approx((F.cross_entropy(x[:, :3], y) + F.cross_entropy(x[:, 3:], y)).item())
    assert mean.argmax(1).tolist() == [0, 2, 0]


def test_the_rest_of_mains_flags_and_the_eval_mode(tmp_path):
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    from ssvit.methods.sit import SiT
    argv = ["--method", "sit", "--data-set", "STL10", "--opt", "adamw", "--sched", "cosine", "--cooldown-epochs", "10",
            "--smoothing", "0.1", "--reprob", "0.25", "--mixup", "0.8", "--pin-mem", "--world_size", "4", "--eval"]
    a = parse_with_config(get_args_parser(argv), argv)
    SiT.resolve_args(a)
    assert a.dataset == "stl10_unlabeled" and a.validate_only and a.cooldown_epochs == 10 and a.world_size == 4
    for bad in (["--opt", "sgd"], ["--opt-eps", "1e-6"], ["--sched", "step"], ["--lr-noise", "0.5"]):
        b = parse_with_config(get_args_parser(["--method", "sit"] + bad), ["--method", "sit"] + bad)
        with pytest.raises(ValueError):
            SiT.resolve_args(b)
    # --eval: the SSL-losses evaluation of --resume's checkpoint only
    flags = SIT + ["--data-set", "synthetic", "--synthetic_size", "32", "--epochs", "1", "--num_workers", "0",
                   "--tensorboard", "false", "--warmup-epochs", "1", "--output", str(tmp_path / "run")]
    assert _run(flags).returncode == 0
    p = _run(flags + ["--eval", "--resume", str(tmp_path / "run" / "checkpoint.pth")])
    assert p.returncode == 0 and "* Acc@1" in p.stdout and "Starting training" not in p.stdout, p.stderr[-2000:]


def test_an_original_layout_checkpoint_loads_for_knn_and_finetuning(tmp_path):
    import argparse
    torch.manual_seed(0)
    ssl = create_backbone("sit_pico", img_size=16, training_mode="SSL")
    path = tmp_path / "checkpoint.pth"  # main.py at 1aacd6a: model / optimizer / lr_scheduler / epoch / args
    torch.save({"model": ssl.state_dict(), "optimizer": {}, "lr_scheduler": {}, "epoch": 9,
                "args": argparse.Namespace(model="SiT_base_patch16_224")}, path)
    from ssvit.evaluation.knn import build_eval_backbone
    model = build_eval_backbone("sit_pico", 4, str(path), "teacher")
    x = torch.randn(2, 3, 16, 16)
    t = ssl.eval().forward_tokens(x)
    torch.testing.assert_close(model(x), torch.cat([t[:, 0], t[:, 1]], 1))
    from ssvit.cli.finetune import parse
    from ssvit.methods.finetune import Finetune
    ft = Finetune(parse(["--model", "sit_pico", "--patch_size", "4", "--input_size", "16", "--nb_classes", "5",
                         "--finetune", str(path), "--output_dir", str(tmp_path / "ft")]))
    assert torch.equal(ft.student.blocks[1].mlp.fc1.weight, ssl.blocks[1].mlp.fc1.weight)
    assert ft.student.rot_head.weight.shape == (5, 96)
    out = ft.student.eval()(x)
    assert isinstance(out, tuple) and out[0].shape == (2, 5)


def test_training_mode_finetune_from_a_config_file_is_refused_not_pretrained(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: sit\ntraining_mode: finetune\n")
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    from ssvit.methods.sit import SiT
    argv = ["--config", str(cfg)]
    args = parse_with_config(get_args_parser(argv), argv)
    SiT.resolve_args(args)
    with pytest.raises(ValueError, match="a --config file's training_mode: finetune is not redirected"):
        SiT.check_args(args)
