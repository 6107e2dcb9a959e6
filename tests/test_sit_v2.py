"""SiT-v2 (ssvit/methods/sit_v2.py and the v2 parts of ssvit/models/sit.py, ssvit/objectives/sit.py):
the heads' layout and quirks, SimCLR against a hand computation without a process group, GMML
masks (coverage, alignment, fill types, re-corruption from the batch), training on a fixed batch,
the README command, exact resume and k-NN loading of the teacher."""
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from method_helpers import build_method, train_on_fixed_batch
from ssvit.models.sit import CLSHead, RECHead
from ssvit.objectives.sit import GMML_drop_rand_patches, GMML_replace_list, SimCLR
from ssvit.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_cls_head_layout_and_activation_quirk():
    h = CLSHead(384, 256)
    sd = h.state_dict()
    assert sd["mlp.0.weight"].shape == (4096, 384) and sd["mlp.3.weight"].shape == (4096, 4096)
    assert sd["mlp.6.weight"].shape == (256, 4096) and "mlp.7.weight" not in sd and "mlp.7.running_mean" in sd
    assert isinstance(h.mlp[2], torch.nn.ReLU) and isinstance(h.mlp[5], torch.nn.GELU)  # ReLU, then GELU
    assert set(CLSHead(384, 256, nlayers=1).state_dict()) == {"mlp.weight", "mlp.bias"}
    five = CLSHead(8, 4, nlayers=5, hidden_dim=16)
    assert [type(m).__name__ for m in five.mlp] == ["Linear", "BatchNorm1d", "ReLU"] + \
        ["Linear", "BatchNorm1d", "GELU"] * 3 + ["Linear", "BatchNorm1d"]
    r = RECHead(384)
    assert {k: tuple(v.shape) for k, v in r.state_dict().items() if "convTrans" in k} == \
        {"convTrans.weight": (384, 3, 16, 16), "convTrans.bias": (3,)}
    assert [k for k in r.state_dict() if k.startswith("mlp")] == [f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    assert RECHead(24, patch_size=4)(torch.randn(2, 9, 24)).shape == (2, 3, 12, 12)


def test_simclr_matches_a_hand_computation_without_a_process_group():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    tau = 0.2

    def cl(q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = q @ k.T / tau
        return -np.mean([torch.log_softmax(logits[i], 0)[i].item() for i in range(len(q))]) * 2 * tau
    expected = cl(s[:3], t[3:]) + cl(s[3:], t[:3])
    assert SimCLR(tau)(s, t, 0).item() == pytest.approx(expected, rel=1e-5)
    t.requires_grad_(True)
    SimCLR(tau)(s.requires_grad_(True), t).backward()
    assert t.grad is None and s.grad is not None  # the teacher is detached


@pytest.mark.parametrize("align", [1, 4])
def test_gmml_mask_coverage_alignment_and_fill(align):
    H = W = 32
    for seed in range(10):
        x = torch.randn(3, H, W)
        rng = np.random.RandomState(seed)
        target = np.random.RandomState(seed).uniform(0.5, 0.5) * H * W
        y, mask = GMML_drop_rand_patches(x.clone(), drop_type="zeros", max_replace=0.5, align=align, rng=rng)
        m = mask[0].bool()
        assert mask[0].sum() >= target and torch.equal(mask[0], mask[1])
        assert torch.all(y[:, m] == 0) and torch.equal(y[:, ~m], x[:, ~m])
        if align > 1:  # block edges on the align grid
            assert torch.equal(m.reshape(H // align, align, W // align, align).amax((1, 3)).repeat_interleave(align, 0)
                               .repeat_interleave(align, 1), m)
        other = torch.randn(3, H, W)
        z, mz = GMML_drop_rand_patches(x.clone(), other, max_replace=0.3, align=align, rng=np.random.RandomState(seed))
        assert torch.equal(z[:, mz[0].bool()], other[:, mz[0].bool()]) and mz[0].sum() >= 0.3 * H * W
    cover = [GMML_drop_rand_patches(torch.randn(3, 64, 64), drop_type="noise", max_replace=0.5,
                                    rng=np.random.RandomState(s))[1][0].mean().item() for s in range(20)]
    assert 0.5 <= min(cover) and max(cover) < 0.6  # the spec: 0.50-0.54 measured at 0.5
    kinds = {str(GMML_drop_rand_patches(torch.ones(3, 16, 16), drop_type="zeros-noise", max_replace=0.5, align=1,
                                        rng=np.random.RandomState(s))[0].min().item() == 0.0) for s in range(30)}
    assert kinds == {"True", "False"}  # a '-'-separated list draws one type per call


def test_replace_list_recorrupts_about_half_from_clean_images_of_the_batch():
    B = 64
    clean = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, 16, 16).clone()
    prev = torch.full_like(clean, -1.0)
    prev_m = torch.full_like(clean, 0.5)
    out, masks = GMML_replace_list(clean, prev, prev_m, max_replace=0.3, align=1, rng=np.random.RandomState(0),
                                   py_rng=random.Random(0))
    kept = [i for i in range(B) if torch.equal(out[i], prev[i]) and torch.equal(masks[i], prev_m[i])]
    assert 16 < len(kept) < 48  # probability 1/2 with the default drop_type 'noise'
    for i in set(range(B)) - set(kept):
        m = masks[i].bool()
        vals = set(out[i][m].unique().tolist())
        assert torch.all(out[i][~m] == i) and len(vals) == 1  # blocks of one other clean image j (may be i)
        assert m.float().mean() >= 0.3


FLAGS = ["--method", "sit_v2", "--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "16",
         "--cls_hidden_dim", "64", "--drop_path_rate", "0"]


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    m, _ = build_method(FLAGS + ["--output_dir", ""])
    g = torch.Generator().manual_seed(0)
    clean = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    corrupted, masks = [], []
    for v in clean:
        cs, ms = zip(*[GMML_drop_rand_patches(x.clone(), max_replace=0.5, align=1, rng=np.random.RandomState(i))
                       for i, x in enumerate(v)])
        corrupted.append(torch.stack(cs))
        masks.append(torch.stack(ms))
    losses = train_on_fixed_batch(m, [clean, corrupted, masks], steps=12, lr=2e-3)
    assert losses[-1] < losses[0] - 0.1, losses


def test_readme_command_parses():
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    argv = ["--method", "sit_v2", "--batch_size", "64", "--epochs", "801", "--data-set", "ImageNet", "--output_dir", "x"]
    a = parse_with_config(get_args_parser(argv), argv)
    assert (a.batch_size_per_gpu, a.epochs, a.dataset, a.output_dir, a.out_dim, a.simclr_temp, a.lmbda) == \
        (64, 801, "imagefolder", "x", 256, 0.2, 1)
    assert (a.drop_perc, a.drop_replace, a.drop_align, a.drop_type, a.weight_decay_end, a.arch) == \
        (0.5, 0.3, 1, "zeros", 0.1, "vit_small")


def _run(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_pretrain.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)


def test_exact_resume_and_the_teacher_loads_for_knn(tmp_path):
    flags = FLAGS + ["--dataset", "synthetic", "--synthetic_size", "32", "--batch_size", "8", "--epochs", "2",
                     "--num_workers", "0", "--tensorboard", "false", "--warmup_epochs", "1"]
    full, part = tmp_path / "full", tmp_path / "part"
    p = _run(flags + ["--output_dir", str(full)])
    assert p.returncode == 0, p.stderr[-2000:]
    assert (full / "reconstruction_samples" / "epoch_00001.png").is_file()
    assert _run(flags + ["--max_iters", "3", "--output_dir", str(part)]).returncode == 0
    p2 = _run(flags + ["--output_dir", str(part)])
    assert p2.returncode == 0 and "Resumed from" in p2.stdout, p2.stderr[-2000:]
    a, b = load_checkpoint(str(full / "checkpoint.pth")), load_checkpoint(str(part / "checkpoint.pth"))
    for net in ("student", "teacher"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    assert any(k.startswith("module.head_recons.") for k in a["teacher"])  # BN heads: the DDP prefix
    from ssvit.evaluation.knn import build_eval_backbone
    from ssvit.models import create_backbone
    model = build_eval_backbone("vit_pico", 4, str(full / "checkpoint.pth"), "teacher")
    ref = create_backbone("vit_pico", patch_size=4, img_size=16)
    ref.load_state_dict({k[len("module.backbone."):]: v for k, v in a["teacher"].items()
                         if k.startswith("module.backbone.")})
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), ref.eval()(x))


def test_data_set_names_default_pets_and_unread_layouts_are_refused_by_name(capsys):
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    parse = lambda *a: parse_with_config(get_args_parser(["--method", "sit_v2"]), ["--method", "sit_v2", *a])  # noqa: E731
    assert parse().dataset == "pets"  # main.py's default --data_set Pets
    assert [parse("--data_set", n).dataset for n in ("Pets", "Cars", "Aircraft", "Flowers", "CIFAR100", "TinyImageNet")] == \
        ["pets", "cars", "aircraft", "flowers102", "cifar100", "tinyimagenet"]
    for name, why in (("CUB", "images.txt"), ("ImageNet5p", "5 % subset")):
        with pytest.raises(SystemExit):
            parse("--data_set", name)
        err = capsys.readouterr().err
        assert f"--data_set {name}: " in err and why in err and "ImageFolder" in err
