"""The embedded default job's script (``ssvit demo``, ``ssvit/cli/demo.py``) on tiny synthetic data: its
k-NN figures must equal the ones of the generic evaluation path (extract_features / raw pixels)."""
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_results_match_generic_knn_path(tmp_path):
    import argparse

    from ssvit.cli import demo

    from ssvit.models.loading import load_pretrained_weights
    from ssvit.evaluation import build_knn_datasets, dataset_labels, extract_features, knn_classifier
    from ssvit.evaluation.knn import raw_pixel_features
    from ssvit.models import create_backbone

    out = tmp_path / "demo"
    summary = demo.main(["--dataset", "synthetic", "--synthetic_size", "64", "--global_crops_size", "28",
                         "--local_crops_size", "14", "--max_iters", "2", "--batch_size_per_gpu", "16",
                         "--num_workers", "0", "--attention_images", "2", "--nb_knn", "5",
                         "--output_dir", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["top1"] == summary["top1"] and set(saved["top1"]) == {"dino_teacher", "random_init", "raw_pixels"}
    assert os.path.getsize(saved["attention_png"]) > 1000
    assert os.path.getsize(saved["summary_png"]) > 10000 and saved["summary_png"] == str(out / "summary.png")
    assert saved["features"] == "cls_avgpool" and saved["pretrain_seconds"] > 0 and saved["eval_seconds"] > 0
    from ssvit.evaluation.run_summary import training_loss_curve
    steps, losses, unit = training_loss_curve(str(out))
    assert unit == "iteration" and steps == [0] and len(losses) == 1  # logged every --print_freq iterations: the first of 2

    # recompute each figure through the generic path used by eval_knn.py
    ns = argparse.Namespace(dataset="synthetic", data_path=None, download=False, eval_size=28, synthetic_size=64)
    train_ds, test_ds = build_knn_datasets(ns)
    ytr, yte = dataset_labels(train_ds), dataset_labels(test_ds)

    class ClsAvgpool(torch.nn.Module):  # the default feature, computed from the tokens independently
        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            t = self.vit.forward_tokens(x)
            return torch.cat([t[:, 0], t[:, 1:].mean(1)], 1)

    def top1(model):
        model.eval()
        with torch.no_grad():
            f = [F.normalize(extract_features(ClsAvgpool(model), DataLoader(d, batch_size=7)), dim=1)
                 for d in (train_ds, test_ds)]
        return knn_classifier(f[0], ytr, f[1], yte, 5, 0.07)[0]

    import yaml
    cfg = yaml.safe_load((out / "config.yaml").read_text())  # the default config's arch and patch
    assert (cfg["arch"], cfg["patch_size"]) == ("vit_shallow", 7)
    teacher = create_backbone(cfg["arch"], patch_size=7, img_size=28)
    load_pretrained_weights(teacher, str(out / "checkpoint.pth"), "teacher", cfg["arch"])
    torch.manual_seed(0)  # the demo seeds the random-init ViT with --seed (default 0)
    random_vit = create_backbone(cfg["arch"], patch_size=7, img_size=28)
    pix = knn_classifier(raw_pixel_features(train_ds), ytr, raw_pixel_features(test_ds), yte, 5, 0.07)[0]
    expected = {"dino_teacher": top1(teacher), "random_init": top1(random_vit), "raw_pixels": pix}
    for k, v in expected.items():
        assert abs(summary["top1"][k] - v) < 1e-6, (k, summary["top1"][k], v)


def test_demo_cls_avgpool_features_are_cls_and_mean_patch_token(tmp_path):
    from ssvit.cli import demo
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    vit = create_backbone("vit_pico", patch_size=4, img_size=16).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens = vit.forward_tokens(x)
        got = demo.backbone_features(vit, x, ["cls_avgpool"])["cls_avgpool"]
        assert torch.equal(demo.backbone_features(vit, x, ["cls"])["cls"], tokens[:, 0])
        blocks = vit.get_intermediate_layers(x, 4)
        last4 = demo.backbone_features(vit, x, ["last4_cls"])["last4_cls"]
        together = demo.backbone_features(vit, x, ["cls", "cls_avgpool", "last4_cls"])  # one pass serves all
        assert torch.equal(together["cls_avgpool"], got) and torch.equal(together["last4_cls"], last4)
        assert torch.equal(together["cls"], tokens[:, 0])
    torch.testing.assert_close(got, torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1))
    torch.testing.assert_close(last4, torch.cat([b[:, 0] for b in blocks], 1))
    torch.testing.assert_close(last4[:, -96:], tokens[:, 0])
    train = (x, torch.tensor([0, 1, 0]))
    # the k-NN row uses the chosen feature: with k=1 each image finds itself
    assert demo.knn_top1(vit, train, train, 1, "cls_avgpool") == 100.0


def test_demo_bad_input_is_one_line_and_exit_2(tmp_path):
    import subprocess
    # 32 px crops against the default config's patch 7
    proc = subprocess.run([sys.executable, "-m", "ssvit", "demo", "--dataset",
                           "synthetic", "--synthetic_size", "16", "--global_crops_size", "32", "--output_dir",
                           str(tmp_path / "demo")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: --global_crops_size (32) must be a multiple of --patch_size (7): the patch embedding "
                     "would drop the remaining pixels"], proc.stderr[-2000:]
    assert not (tmp_path / "demo" / "results.json").exists()


def test_a_feature_that_reads_more_blocks_than_the_model_has_is_refused_before_pretraining(tmp_path):
    import pytest

    from ssvit.cli import demo
    from ssvit.evaluation.features import backbone_features
    from ssvit.models import create_backbone
    one_block = create_backbone("vit_shallow", patch_size=7, img_size=14).eval()
    x = torch.randn(2, 3, 14, 14)
    with pytest.raises(ValueError, match="^feature 'last4_cls' reads the last 4 blocks; the model has 1$"):
        backbone_features(one_block, x, ["cls", "last4_cls"])
    assert backbone_features(one_block, x, ["cls_avgpool"])["cls_avgpool"].shape == (2, 512)
    with pytest.raises(ValueError, match="^feature 'last4_cls' reads the last 4 blocks; the model has 1$"):
        demo.main(["--dataset", "synthetic", "--synthetic_size", "16", "--arch", "vit_shallow",
                   "--knn_features", "last4_cls", "--output_dir", str(tmp_path / "demo")])
    assert not (tmp_path / "demo" / "checkpoint.pth").exists()  # refused before any pretraining
