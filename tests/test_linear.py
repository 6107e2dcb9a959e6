"""Linear probing (eval_linear.py, ssvit/evaluation/linear.py): the feature layout, the classifier,
the validation averages, training on separable features, --evaluate with a saved head in both
layouts, the cached-feature path and resume."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ssvit.evaluation.linear import LinearClassifier, feature_dim, linear_features, train_one_epoch, validate
from ssvit.models import create_backbone
from ssvit.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone("vit_pico", patch_size=4, img_size=16).eval()


def test_features_concatenate_the_last_blocks_cls_tokens(vit):
    x = torch.randn(3, 3, 16, 16)
    f = linear_features(vit, x, n_last_blocks=2)
    out = vit.get_intermediate_layers(x, 2)
    assert f.shape == (3, 2 * vit.embed_dim) == (3, feature_dim(vit, 2, False))
    assert torch.equal(f[:, :vit.embed_dim], out[0][:, 0]) and torch.equal(f[:, vit.embed_dim:], out[1][:, 0])


def test_avgpool_interleaves_cls_and_mean_patch_token(vit):
    x = torch.randn(2, 3, 16, 16)
    f = linear_features(vit, x, n_last_blocks=1, avgpool_patchtokens=True)
    last = vit.get_intermediate_layers(x, 1)[-1]
    cls, avg = last[:, 0], last[:, 1:].mean(1)
    assert f.shape == (2, 2 * vit.embed_dim) == (2, feature_dim(vit, 1, True))
    assert torch.equal(f[:, 0::2], cls) and torch.equal(f[:, 1::2], avg)  # [cls_0, avg_0, cls_1, avg_1, ...]
    assert not torch.equal(f, torch.cat([cls, avg], 1))


def test_classifier_init_and_keys():
    torch.manual_seed(0)
    c = LinearClassifier(4096, 1000)
    assert set(c.state_dict()) == {"linear.weight", "linear.bias"}
    assert torch.all(c.linear.bias == 0) and abs(c.linear.weight.std().item() - 0.01) < 5e-4


def test_validate_weights_accuracy_by_batch_and_averages_the_loss_over_batches(capsys):
    c = LinearClassifier(2, 5)
    with torch.no_grad():
        c.linear.weight.copy_(torch.eye(5, 2) * 10)
        c.linear.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 1, 3])  # predictions 0, 1, 0, 1, 0 -> right, right, wrong, right, wrong
    loader = DataLoader(TensorDataset(x, y), batch_size=3)  # batches of 3 and 2
    stats = validate(None, c, loader, "cpu")
    assert stats["acc1"] == pytest.approx(60.0)  # 3 of 5, weighted by batch size (not (66.7 + 50) / 2)
    logits = c(x)
    per_batch = [F.cross_entropy(logits[:3], y[:3]).item(), F.cross_entropy(logits[3:], y[3:]).item()]
    assert stats["loss"] == pytest.approx(sum(per_batch) / 2)  # plain mean over batches
    assert f"* Acc@1 60.000 Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}" in capsys.readouterr().out


def test_head_on_separable_cached_features_reaches_100_percent():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 32, generator=g) * 5
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 32, generator=g)
    ds = TensorDataset(x, y)
    c = LinearClassifier(32, 4)
    opt = torch.optim.SGD(c.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        train_one_epoch(None, c, opt, DataLoader(ds, batch_size=32, shuffle=True, generator=g), "cpu", print_freq=0)
    assert validate(None, c, DataLoader(ds, batch_size=64), "cpu")["acc1"] == 100.0


def _weights(tmp_path):
    torch.manual_seed(0)
    m = create_backbone("vit_pico", patch_size=4, img_size=32)
    path = tmp_path / "w.pth"
    torch.save({"teacher": m.state_dict()}, path)
    return str(path)


BASE = ["--arch", "vit_pico", "--patch_size", "4", "--dataset", "synthetic", "--synthetic_size", "64", "--num_labels",
        "10", "--batch_size_per_gpu", "16", "--num_workers", "0", "--lr", "0.5", "--print_freq", "0"]


def _run(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval_linear.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=300)


def test_resume_equals_an_uninterrupted_run_and_evaluate_reads_both_layouts(tmp_path, monkeypatch):
    w = _weights(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    flags = BASE + ["--pretrained_weights", w, "--epochs", "4"]
    p = _run(flags + ["--output_dir", str(full)])
    assert p.returncode == 0, p.stderr[-2000:]
    # interrupted inside its second epoch (in-process, so the moment is exact), then resumed by the CLI
    from interrupt_helpers import run_eval_linear_killed_in_epoch
    run_eval_linear_killed_in_epoch(monkeypatch, flags + ["--output_dir", str(part)], epoch=1)
    done = load_checkpoint(str(part / "checkpoint.pth.tar"))["epoch"]
    assert done == 1
    p2 = _run(flags + ["--output_dir", str(part)])
    assert p2.returncode == 0 and f"Resumed from {part / 'checkpoint.pth.tar'}: epoch {done}" in p2.stdout, p2.stderr
    a, b = load_checkpoint(str(full / "checkpoint.pth.tar")), load_checkpoint(str(part / "checkpoint.pth.tar"))
    assert a["epoch"] == b["epoch"] == 4 and a["best_acc"] == b["best_acc"]
    assert set(a["state_dict"]) == {"module.linear.weight", "module.linear.bias"}
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k])
    assert {"epoch", "state_dict", "optimizer", "scheduler", "best_acc"} == set(a)

    # --evaluate: this script's checkpoint, and the released layout holding the same head
    released = tmp_path / "vit_pico4_linearweights.pth"
    torch.save({"state_dict": dict(a["state_dict"])}, released)
    outs = []
    for head in (full / "checkpoint.pth.tar", released):
        p = _run(BASE + ["--pretrained_weights", w, "--evaluate", "--pretrained_linear", str(head)])
        assert p.returncode == 0, p.stderr[-2000:]
        lines = [line for line in p.stdout.splitlines() if line.startswith(("* Acc@1", "Accuracy of the network"))]
        assert len(lines) == 2 and lines[1].startswith("Accuracy of the network on the 16 test images: ")
        assert lines[1].endswith("%") and len(lines[1].split(": ")[1].rstrip("%").split(".")[1]) == 1
        outs.append(lines)
    assert outs[0] == outs[1]
    last = [line for line in (full / "log.txt").read_text().splitlines()][-1]
    assert f"{__import__('json').loads(last)['test_acc1']:.1f}%" in outs[0][1]


def test_mismatched_head_is_a_one_line_error(tmp_path):
    w = _weights(tmp_path)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"module.linear.weight": torch.zeros(5, 7), "module.linear.bias": torch.zeros(5)}}, bad)
    p = _run(BASE + ["--pretrained_weights", w, "--evaluate", "--pretrained_linear", str(bad)])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "shape mismatches" in p.stderr and "linear.weight" in p.stderr


def test_cached_feature_path_trains_and_writes_results(tmp_path):
    w = _weights(tmp_path)
    out = tmp_path / "cached"
    p = _run(BASE + ["--pretrained_weights", w, "--epochs", "2", "--cache_features", "true", "--output_dir", str(out)])
    assert p.returncode == 0 and "Extracting the frozen features once" in p.stdout, p.stderr[-2000:]
    import json
    res = json.loads((out / "results.json").read_text())
    assert res["cache_features"] is True and 0 <= res["best_acc1"] <= 100 and res["test_images"] == 16
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [0, 1]


def test_raw_pixel_baseline_features_are_the_flattened_image(tmp_path):
    from ssvit.evaluation.linear import RawPixels
    m = RawPixels(3, 8)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(linear_features(m, x), x.flatten(1)) and feature_dim(m, 4, False) == 192
    p = _run(BASE + ["--arch", "raw_pixels", "--epochs", "1", "--output_dir", str(tmp_path / "px")])
    assert p.returncode == 0 and "Top-1 test accuracy" in p.stdout, p.stderr[-2000:]
