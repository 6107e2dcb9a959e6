"""Finetuning (main_finetune.py, ssvit/methods/finetune.py): layer-wise lr decay groups, training
on a fixed batch, loading a pretraining checkpoint, resume equal to an uninterrupted run."""
import os
import subprocess
import sys

import pytest
import torch

from method_helpers import build_method, train_on_fixed_batch
from ssvit.methods.finetune import FinetuneModel, layer_ids, param_groups_lrd
from ssvit.models import create_backbone
from ssvit.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_vit_layer_decay_follows_maes_rule():
    m = FinetuneModel(create_backbone("vit_pico", patch_size=4, img_size=16), 10)  # depth 4
    groups = param_groups_lrd(m, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): (g["lr_scale"], g["weight_decay"], g["wd_scale"]) for g in groups for p in g["params"]}
    named = dict(m.named_parameters())

    def at(name):
        return scale[id(named[name])]
    assert at("backbone.cls_token") == (0.5 ** 5, 0.0, 0.0) and at("backbone.pos_embed") == (0.5 ** 5, 0.0, 0.0)
    assert at("backbone.patch_embed.proj.weight") == (0.5 ** 5, 0.05, 1.0)
    assert at("backbone.blocks.0.attn.qkv.weight") == (0.5 ** 4, 0.05, 1.0)
    assert at("backbone.blocks.0.attn.qkv.bias") == (0.5 ** 4, 0.0, 0.0)
    assert at("backbone.blocks.3.mlp.fc1.weight") == (0.5, 0.05, 1.0)
    assert at("backbone.norm.weight") == (1.0, 0.0, 0.0) and at("head.weight") == (1.0, 0.05, 1.0)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_swin_layer_ids_count_blocks_over_the_stages():
    m = FinetuneModel(create_backbone("swin_pico"), 10)
    ids = layer_ids(m)
    depths = [len(layer.blocks) for layer in m.backbone.layers]
    assert ids["backbone.patch_embed.proj.weight"] == 0
    for s, d in enumerate(depths):
        for j in range(d):
            assert ids[f"backbone.layers.{s}.blocks.{j}.attn.qkv.weight"] == sum(depths[:s]) + j + 1
        if m.backbone.layers[s].downsample is not None:  # SimMIM: layers.s.downsample -> sum(depths[:s+1])
            assert ids[f"backbone.layers.{s}.downsample.reduction.weight"] == sum(depths[:s + 1])
    assert ids["head.weight"] == sum(depths) + 1 and ids["backbone.norm.weight"] == sum(depths) + 1


FT = ["--method", "finetune", "--arch", "vit_pico", "--patch_size", "4", "--input_size", "16", "--nb_classes", "4",
      "--epochs", "2", "--aa", "none", "--reprob", "0", "--drop_path_rate", "0"]


@pytest.mark.parametrize("mixup", ["0", "0.8"])
def test_finetuning_a_tiny_vit_lowers_the_loss_on_a_fixed_batch(mixup):
    torch.manual_seed(0)
    m, _ = build_method(FT + ["--mixup", mixup, "--cutmix", "0", "--smoothing", "0.1"])
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    losses = train_on_fixed_batch(m, x, steps=15, lr=3e-3, labels=y, epoch=0)
    assert losses[-1] < losses[0] - 0.3, losses


def _run(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_finetune.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=300)


CLI = ["--model", "vit_pico", "--patch_size", "4", "--input_size", "32", "--dataset", "synthetic", "--synthetic_size",
       "64", "--nb_classes", "10", "--batch_size", "16", "--num_workers", "0", "--warmup_epochs", "1",
       "--tensorboard", "false", "--epochs", "2"]


def test_finetune_loads_a_pretraining_checkpoint_and_resumes_exactly(tmp_path):
    torch.manual_seed(1)
    bb = create_backbone("vit_pico", patch_size=4, img_size=32)
    ck = tmp_path / "pre.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in bb.state_dict().items()},
                "student": {f"module.backbone.{k}": v * 0 for k, v in bb.state_dict().items()}}, ck)
    full, part = tmp_path / "full", tmp_path / "part"
    p = _run(CLI + ["--finetune", str(ck), "--output_dir", str(full)])
    assert p.returncode == 0 and "Finetuning from" in p.stdout, p.stderr[-2000:]
    assert _run(CLI + ["--finetune", str(ck), "--max_iters", "3", "--output_dir", str(part)]).returncode == 0
    p2 = _run(CLI + ["--finetune", str(ck), "--output_dir", str(part)])
    assert p2.returncode == 0 and "Resumed from" in p2.stdout, p2.stderr[-2000:]
    a, b = load_checkpoint(str(full / "checkpoint.pth")), load_checkpoint(str(part / "checkpoint.pth"))
    assert a["epoch"] == b["epoch"] == 2 and "teacher" not in a
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    assert (full / "checkpoint_best.pth").exists()
    import json
    log = [json.loads(line) for line in (full / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and {"val_acc1", "val_acc5", "best_acc1"} <= set(log[-1])
    # the teacher (the default --checkpoint_key) was loaded, not the zeroed student
    from ssvit.cli.finetune import parse
    from ssvit.methods.finetune import Finetune
    m = Finetune(parse(CLI + ["--finetune", str(ck)]))
    assert torch.equal(m.student.backbone.cls_token, bb.cls_token)
    # --eval with --resume: validation only
    p3 = _run(CLI + ["--eval", "--resume", str(full / "checkpoint_best.pth"), "--output_dir", str(tmp_path / "ev")])
    assert p3.returncode == 0 and "Accuracy of the network on the 16 test images" in p3.stdout, p3.stderr[-2000:]


def test_mae_flags_map_onto_the_engine():
    from ssvit.cli.finetune import parse
    args = parse(CLI + ["--blr", "2e-3", "--clip_grad", "1.5", "--drop_path", "0.2", "--output_dir", "/tmp/x"])
    assert args.lr == 2e-3 and args.finetune_clip_grad == 1.5 and args.clip_grad == 0 and args.drop_path_rate == 0.2
    assert args.batch_size_per_gpu == 16 and args.arch == "vit_pico" and args.weight_decay == args.weight_decay_end
    absolute = parse(CLI + ["--lr", "1e-4", "--output_dir", "/tmp/x"])
    assert absolute.lr == pytest.approx(1e-4 * 256 / 16)  # the engine scales by the effective batch again
    defaults = parse(["--output_dir", "/tmp/x"])
    assert (defaults.epochs, defaults.batch_size_per_gpu, defaults.lr, defaults.layer_decay, defaults.smoothing,
            defaults.mixup, defaults.cutmix, defaults.reprob, defaults.aa, defaults.warmup_epochs) == \
        (50, 64, 1e-3, 0.75, 0.1, 0.8, 1.0, 0.25, "rand-m9-mstd0.5-inc1", 5)


def test_maes_randaugment_policy_survives_the_top_posterize_magnitude():
    """timm's PosterizeIncreasing reaches 0 bits at magnitude 10, which current Pillow rejects."""
    import argparse

    import numpy as np
    from PIL import Image
    from timm.data import auto_augment as aa

    from ssvit.methods.finetune import build_finetune_transform
    args = argparse.Namespace(input_size=28, color_jitter=None, aa="rand-m9-mstd0.5-inc1", reprob=0.25,
                              remode="pixel", recount=1)
    tf = build_finetune_transform(args, is_train=True)
    im = Image.fromarray((np.random.RandomState(0).rand(28, 28) * 255).astype("uint8"))  # grey, as Fashion-MNIST
    assert tf(im).shape == (3, 28, 28)
    op = aa.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert aa.LEVEL_TO_ARG["PosterizeIncreasing"](10, {}) == (1,) and op(im.convert("RGB")).size == (28, 28)


def test_global_pool_is_maes_fc_norm_of_the_mean_patch_token_and_cls_token_is_dinos():
    torch.manual_seed(0)
    bb = create_backbone("vit_pico", patch_size=4, img_size=16)
    ref = create_backbone("vit_pico", patch_size=4, img_size=16)
    ref.load_state_dict(bb.state_dict())
    m = FinetuneModel(bb, 10, global_pool=True).eval()
    with torch.no_grad():
        m.fc_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16, 16)
    tokens = ref.eval().forward_blocks(x)
    expected = m.head(torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (ref.embed_dim,), m.fc_norm.weight,
                                                     m.fc_norm.bias, eps=1e-6))
    torch.testing.assert_close(m(x), expected)
    keys = set(m.state_dict())
    assert {"fc_norm.weight", "fc_norm.bias"} <= keys and not any(k.startswith("backbone.norm.") for k in keys)
    ids = layer_ids(m)
    assert ids["fc_norm.weight"] == ids["head.weight"] == 5  # depth 4 + 1: lr_scale 1
    c = FinetuneModel(ref, 10, global_pool=False).eval()  # --cls_token: the normed CLS token
    torch.testing.assert_close(c.features(x), ref(x))
    s = FinetuneModel(create_backbone("swin_pico"), 10, global_pool=True)  # multi-stage: its own pooling
    assert not s.global_pool and not hasattr(s, "fc_norm")
    from ssvit.cli.finetune import parse
    assert parse(["--output_dir", "/tmp/x"]).global_pool is True and parse(["--output_dir", "/tmp/x"]).dist_eval is False
    assert parse(["--cls_token", "--output_dir", "/tmp/x"]).global_pool is False


def test_dist_eval_shards_the_validation_and_sums_exactly(tmp_path):
    """2 Gloo ranks, 17 validation images: with --dist_eval rank 0 takes 9 and rank 1 takes 8 (no
    padded duplicate, unlike MAE's sampler) and the reduced stats equal one process evaluating
    everything; without it every rank evaluates all 17."""
    flags = CLI + ["--synthetic_size", "68", "--output_dir", str(tmp_path / "o"), "--eval_batch_size", "3"]
    from ssvit.cli.finetune import parse
    from ssvit.methods.finetune import Finetune
    torch.manual_seed(0)
    m = Finetune(parse(flags))
    single = m.evaluate(m.student)
    n = len(m.val_loader().dataset)
    assert n == 17
    for extra, local in ((["--dist_eval"], {0: (n + 1) // 2, 1: n // 2}), ([], {0: n, 1: n})):
        out = tmp_path / ("dist" if extra else "full")
        out.mkdir()
        init = tmp_path / f"init_{out.name}"
        procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "dist_eval_worker.py"), str(init),
                                   str(out), str(r), *flags, *extra], env=ENV, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-2000:]
        import json
        for r in (0, 1):
            res = json.loads((out / f"rank{r}.json").read_text())
            assert res["local_samples"] == local[r]
            for k in ("acc1", "acc5", "loss"):
                assert res["stats"][k] == pytest.approx(single[k], rel=1e-6, abs=1e-6), (extra, r, k)


def test_ibots_finetuning_flags_are_refused_by_name_not_run_as_maes(tmp_path):
    """iBOT's run.sh imagenet_cls passes BEiT's flags: running them with MAE's schedule would be "almost iBOT"."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "main_finetune.py"), "--epochs", "100", "--layer_decay", "0.65",
                        "--layer_scale_init_value", "0.0", "--disable_rel_pos_bias", "--abs_pos_emb", "--use_cls",
                        "--imagenet_default_mean_and_std", "--output_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--layer_scale_init_value --disable_rel_pos_bias --abs_pos_emb --use_cls --imagenet_default_mean_and_std" \
        in r.stderr and "is not implemented" in r.stderr
    assert not (tmp_path / "o").exists()
