"""tools/knn_probe.py: several feature choices from one pass, baselines, on real Fashion-MNIST images."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

pytestmark = pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                                reason="needs the Debian package dataset-fashion-mnist (scripts/setup.sh installs it)")


def test_probe_features_equal_an_independent_computation(tmp_path):
    import knn_probe
    from ssvit.data import build_dataset
    from ssvit.data.transforms import normalize_transform
    from ssvit.evaluation import knn_classifier
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    same_as_random = create_backbone("vit_pico", patch_size=4, img_size=28)
    torch.manual_seed(1)
    other = create_backbone("vit_pico", patch_size=4, img_size=28).eval()
    for name, model in (("same", same_as_random), ("other", other)):
        torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / f"{name}.pth")
    flags = ["--arch", "vit_pico", "--patch_size", "4", "--train_images", "60", "--test_images", "25", "--nb_knn", "5",
             "--features", "cls", "cls_avgpool"]
    res = knn_probe.main([str(tmp_path / "same.pth"), *flags])
    # the seed-0 model saved as the teacher is the probe's random-init model: identical rows
    assert res["trained/cls"] == res["random_init/cls"] and res["trained/cls_avgpool"] == res["random_init/cls_avgpool"]
    res = knn_probe.main([str(tmp_path / "other.pth"), *flags, "--skip_baselines"])
    assert set(res) == {"trained/cls", "trained/cls_avgpool"}

    tf = normalize_transform()
    tr, te = build_dataset("fashion_mnist", None, train=True), build_dataset("fashion_mnist", None, train=False)
    xtr, xte = torch.stack([tf(tr[i][0]) for i in range(60)]), torch.stack([tf(te[i][0]) for i in range(25)])
    ytr, yte = torch.tensor(tr.targets[:60]), torch.tensor(te.targets[:25])
    with torch.no_grad():
        def cls_avg(x):
            t = other.forward_tokens(x)
            return F.normalize(torch.cat([t[:, 0], t[:, 1:].mean(1)], 1), dim=1)
        expected = knn_classifier(cls_avg(xtr), ytr, cls_avg(xte), yte, 5, 0.07, num_classes=10)[0]
    assert res["trained/cls_avgpool"] == pytest.approx(expected)


def test_default_job_sweep_script_writes_one_row_per_probe(tmp_path):
    import subprocess
    env = dict(os.environ, OUT=str(tmp_path / "sweep"), PROBE_TRAIN="100", PROBE_TEST="40")
    p = subprocess.run(["bash", os.path.join(ROOT, "tools", "default_job_sweep.sh"), "2", "plain=",
                        "bn=--use_bn_in_head true --batch_size_per_gpu 8"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = (tmp_path / "sweep" / "results.md").read_text().strip().splitlines()
    assert [r.split("|")[1].strip() for r in rows] == ["plain", "bn"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "2" and int(cells[2]) >= 0
        top1 = [float(v) for v in cells[3].split("/")]
        assert len(top1) == 2 and all(0 <= v <= 100 for v in top1)  # cls / cls_avgpool
    assert rows[1].endswith("| `--use_bn_in_head true --batch_size_per_gpu 8` |")
    import yaml
    cfg = yaml.safe_load((tmp_path / "sweep" / "bn" / "config.yaml").read_text())
    assert cfg["use_bn_in_head"] is True and cfg["batch_size_per_gpu"] == 8


def test_a_feature_the_model_cannot_give_is_one_line_and_exit_2(tmp_path):
    import subprocess
    from ssvit.models import create_backbone
    model = create_backbone("vit_shallow", patch_size=7, img_size=28)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "run.pth")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "knn_probe.py"), str(tmp_path / "run.pth"), "--arch",
                           "vit_shallow", "--patch_size", "7", "--features", "cls", "last4_cls"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: feature 'last4_cls' reads the last 4 blocks; the model has 1"]


def test_arch_and_patch_size_default_to_what_the_checkpoint_recorded(tmp_path):
    import argparse

    import knn_probe
    from ssvit.models import create_backbone
    torch.manual_seed(3)
    model = create_backbone("vit_shallow", patch_size=7, img_size=28)
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    # a run's checkpoint keeps its args (a Namespace, as DINO's); patch 7 is also vit_shallow's own default,
    # so the recorded patch size is checked with a run that trained vit_shallow at patch 14
    torch.save({"teacher": teacher, "args": argparse.Namespace(arch="vit_shallow", patch_size=7, lr=0.1)},
               tmp_path / "run.pth")
    from ssvit.utils.checkpoint import load_checkpoint
    assert knn_probe.recorded_model(load_checkpoint(str(tmp_path / "run.pth"))) == {"arch": "vit_shallow", "patch_size": 7}
    flags = ["--train_images", "40", "--test_images", "20", "--nb_knn", "5", "--skip_baselines"]
    recorded = knn_probe.main([str(tmp_path / "run.pth"), *flags])
    explicit = knn_probe.main([str(tmp_path / "run.pth"), "--arch", "vit_shallow", "--patch_size", "7", *flags])
    assert recorded == explicit and set(recorded) == {"trained"}
    torch.manual_seed(3)
    p14 = create_backbone("vit_shallow", patch_size=14, img_size=28)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in p14.state_dict().items()},
                "args": {"arch": "vit_shallow", "patch_size": 14}}, tmp_path / "p14.pth")
    assert knn_probe.main([str(tmp_path / "p14.pth"), *flags]) == \
        knn_probe.main([str(tmp_path / "p14.pth"), "--arch", "vit_shallow", "--patch_size", "14", *flags])
    # an explicit --arch with no recorded run: the arch's own default patch size (7 for vit_shallow)
    torch.save({"teacher": teacher}, tmp_path / "bare.pth")
    assert knn_probe.main([str(tmp_path / "bare.pth"), "--arch", "vit_shallow", *flags]) == explicit
    with pytest.raises(ValueError, match="does not record its architecture: give --arch"):
        knn_probe.main([str(tmp_path / "bare.pth"), *flags])


def test_a_missing_checkpoint_is_one_line_and_exit_2_before_any_data_is_read(tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "knn_probe.py"), str(tmp_path / "none.pth")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint '{tmp_path / 'none.pth'}' does not exist"]


def test_the_checkpoint_is_read_once_and_before_any_data(tmp_path, monkeypatch):
    import knn_probe
    from ssvit.models import create_backbone
    from ssvit.utils.checkpoint import CheckpointError, load_checkpoint
    model = create_backbone("vit_pico", patch_size=4, img_size=28)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "run.pth")
    explicit = ["--arch", "vit_pico", "--patch_size", "4", "--skip_baselines"]

    def no_data(*a, **k):
        raise AssertionError("the data were read before the checkpoint was")
    with monkeypatch.context() as m:  # flags given: the file is still read before the data
        m.setattr(knn_probe, "build_dataset", no_data)
        with pytest.raises(CheckpointError, match="does not exist"):
            knn_probe.main([str(tmp_path / "none.pth"), *explicit])
        with pytest.raises(CheckpointError, match="no state dict found under key 'other'"):
            knn_probe.main([str(tmp_path / "run.pth"), "--checkpoint_key", "other", *explicit])
    reads = []
    monkeypatch.setattr(knn_probe, "load_checkpoint", lambda path: reads.append(path) or load_checkpoint(path))
    res = knn_probe.main([str(tmp_path / "run.pth"), "--train_images", "30", "--test_images", "10", "--nb_knn", "5",
                          *explicit])
    assert reads == [str(tmp_path / "run.pth")] and set(res) == {"trained"}
