"""ssvit/evaluation/segmentation_metrics.py, ``ssvit seg-metrics`` and ``ssvit propagate`` (both layouts): IoU against hand-computed confusion matrices
(the 255 rules, absent classes), the overlay picture, and the three scripts end to end on generated
sequences with a small ViT checkpoint (outputs, palettes, seeds, JSON, exit 2 on bad input)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ssvit.data.synthetic_sequences import write_davis, write_ipace
from ssvit.utils.label_png import IPACE_COLOURS, davis_palette
from ssvit.evaluation.segmentation_metrics import ConfusionMatrix, overlay_panel, region_similarity, render_semseg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from ssvit.cli import propagate  # noqa: E402
from ssvit.cli import segmentation_metrics as csm  # noqa: E402


class _Layout:
    """``ssvit propagate`` with its ``--layout`` fixed (the DAVIS and I-PACE commands of the originals)."""

    def __init__(self, layout):
        self.flags = ["--layout", layout]

    def main(self, argv):
        return propagate.main(self.flags + argv)

    def cli(self, argv):
        return propagate.cli(self.flags + argv)


eis, evs = _Layout("ipace"), _Layout("davis")


def test_iou_by_hand_with_the_255_rules_and_absent_classes():
    gt = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 255],
                   [255, 2, 1, 0]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 2],
                     [1, 255, 1, 0]])
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, gt)
    # kept pixels (gt != 255 and pred != 255): 9; confusion rows gt, columns pred
    want = torch.tensor([[3, 1, 0, 0],
                         [0, 3, 0, 0],
                         [0, 0, 1, 0],
                         [0, 0, 0, 0]])
    want[2, 0] = 1  # gt 2 predicted 0 at (1, 2)
    assert torch.equal(cm.mat, want) and cm.dropped == 3
    # IoU: class 0: 3 / (4 + 4 - 3) = 0.6; 1: 3 / (3 + 4 - 3) = 0.75; 2: 1 / (2 + 1 - 1) = 0.5; 3 absent: 0
    torch.testing.assert_close(cm.per_class_iou(), torch.tensor([0.6, 0.75, 0.5, 0.0], dtype=torch.float64))
    assert cm.mean_iou() == pytest.approx((0.6 + 0.75 + 0.5) / 4)
    assert cm.mean_iou_present() == pytest.approx((0.6 + 0.75 + 0.5) / 3)
    s = cm.summary()
    assert s["pixels_counted"] == 9 and s["gt_pixels_per_class"] == [4, 3, 2, 0] and len(s["per_class_iou"]) == 4


def test_confusion_accumulates_over_frames_and_refuses_bad_ids():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    f1 = (np.array([[0, 1]]), np.array([[0, 1]]))
    f2 = (np.array([[1, 1]]), np.array([[2, 1]]))
    a.update(*f1)
    a.update(*f2)
    b.update(np.array([[0, 1, 1, 1]]), np.array([[0, 1, 2, 1]]))
    assert torch.equal(a.mat, b.mat)
    a.update(np.full((2, 2), 255), np.zeros((2, 2)))  # everything dropped: no change
    assert torch.equal(a.mat, b.mat)
    with pytest.raises(ValueError, match="class id 7"):
        a.update(np.array([[7]]), np.array([[0]]))
    with pytest.raises(ValueError, match="differ in size"):
        a.update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_region_similarity_by_hand():
    gt = np.array([[1, 1, 0], [2, 2, 255]])
    pred = np.array([[1, 0, 0], [2, 1, 1]])
    # object 1: P = {(0,0), (1,2)->void dropped, (1,1)}, G = {(0,0), (0,1)}: 1 / 3; object 2: 1 / 2; 3 absent: 1
    assert region_similarity(pred, gt, [1, 2, 3]) == pytest.approx([1 / 3, 1 / 2, 1.0])


def test_overlay_panel_layout():
    img = np.full((40, 30, 3), 200, dtype=np.uint8)
    gt = np.zeros((40, 30), dtype=np.uint8)
    pred = np.full((40, 30), 255, dtype=np.uint8)  # outside the colour table: black
    panel = overlay_panel(img, gt, pred, legend_y=100)  # legends off the picture
    assert panel.shape == (40, 70, 3) and panel.dtype == np.uint8
    assert panel[:, 30:40].max() == 0
    np.testing.assert_allclose(panel[0, 0], (0.5 * 200 / 255 + 0.5 * np.array(IPACE_COLOURS[0]) / 255) * 255, atol=1)
    assert (panel[0, 40] == int(0.5 * 200 / 255 * 255)).all()
    assert render_semseg(np.array([[26, 27]]))[0, 1].tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def tiny_vit_checkpoint(tmp_path_factory):
    from ssvit.models import create_backbone
    torch.manual_seed(0)
    model = create_backbone("vit_pico", patch_size=8, num_classes=0, img_size=32)
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint.pth")
    torch.save({"teacher": model.state_dict(), "student": model.state_dict()}, path)
    return path


def test_ipace_scripts_end_to_end(tmp_path, tiny_vit_checkpoint, capsys):
    data = str(tmp_path / "data")
    runs = write_ipace(data, n_runs=2, n_frames=7, size=(44, 60))  # not multiples of 8
    out = str(tmp_path / "pred")
    res = eis.main(["--arch", "vit_pico", "--patch_size", "8", "--pretrained_weights", tiny_vit_checkpoint,
                    "--data_path", data, "--output_dir", out, "--refresh_label_interval", "3", "--device", "cpu"])
    assert sorted(res) == runs and [r.frames for r in res[runs[0]]] == [2, 2, 0]  # chunks of 3, 3, 1 frames
    stems = sorted(f[:-4] for f in os.listdir(os.path.join(data, runs[0], "image")))
    written = sorted(f[:-4] for f in os.listdir(os.path.join(out, runs[0], "prediction")))
    assert written == stems
    for i in (0, 3, 6):  # chunk seeds are the ground truth
        gt = np.asarray(Image.open(os.path.join(data, runs[0], "segmentation", stems[i] + ".png")))
        pred = np.asarray(Image.open(os.path.join(out, runs[0], "prediction", stems[i] + ".png")))
        assert np.array_equal(gt, pred)
    with Image.open(os.path.join(out, runs[0], "prediction", stems[1] + ".png")) as im:
        assert im.mode == "P" and im.size == (60, 44)

    summary = csm.main(["--data_root", data, "--prediction_path", out])
    printed = capsys.readouterr().out
    assert printed.count("IoU: ") == 2 and "pooled" in printed
    m = json.load(open(os.path.join(out, runs[0], "metrics.json")))
    assert len(m["per_class_iou"]) == 27 and 0 < m["mean_iou"] <= 1 and m["pixels_dropped"] > 0  # the 255 band
    assert m["mean_iou"] == pytest.approx(float(np.mean(m["per_class_iou"])))
    assert summary["per_run_mean_iou"][runs[0]] == pytest.approx(m["mean_iou"])
    assert os.path.isfile(os.path.join(out, "summary.json"))
    with Image.open(os.path.join(out, runs[0], "vis", stems[2] + ".png")) as im:
        assert im.size == (2 * 60 + 10, 44)
    # perfect predictions give IoU 1 over the present classes
    perfect = str(tmp_path / "perfect")
    os.makedirs(os.path.join(perfect, runs[0], "prediction"))
    for s in stems:
        Image.open(os.path.join(data, runs[0], "segmentation", s + ".png")).save(
            os.path.join(perfect, runs[0], "prediction", s + ".png"))
    csm.main(["--dataset_path", os.path.join(data, runs[0]), "--prediction_path", perfect, "--save_vis", "false"])
    m = json.load(open(os.path.join(perfect, runs[0], "metrics.json")))
    present = np.array(m["gt_pixels_per_class"]) > 0
    assert np.allclose(np.array(m["per_class_iou"])[present], 1.0) and m["mean_iou"] == pytest.approx(present.mean())
    assert not os.path.isdir(os.path.join(perfect, runs[0], "vis"))


def test_davis_script_end_to_end(tmp_path, tiny_vit_checkpoint):
    data = str(tmp_path / "davis")
    names = write_davis(data, n_sequences=2, n_frames=4, size=(50, 75))
    out = str(tmp_path / "out")
    res = evs.main(["--arch", "vit_pico", "--patch_size", "8", "--pretrained_weights", tiny_vit_checkpoint,
                    "--data_path", data, "--output_dir", out, "--device", "cpu", "--n_last_frames", "2",
                    "--short_side", "128"])  # frames 128 x 192 (the original's 480 would be 480 x 704)
    assert sorted(res) == names
    files = sorted(os.listdir(os.path.join(out, names[1])))
    assert files == ["00000.png", "00001.png", "00002.png", "00003.png"]
    gt0 = np.asarray(Image.open(os.path.join(data, "Annotations", "480p", names[1], "00000.png")))
    with Image.open(os.path.join(out, names[1], "00000.png")) as im:
        assert np.array_equal(np.asarray(im), gt0)
        assert np.array_equal(np.array(im.getpalette()).reshape(-1, 3), davis_palette())
    with Image.open(os.path.join(out, names[1], "00003.png")) as im:
        assert im.size == (75, 50) and set(np.unique(np.asarray(im))) <= set(range(int(gt0.max()) + 1))
    j = csm.main(["--davis_path", data, "--prediction_path", out])
    assert sorted(j["per_video_j"]) == names and 0 <= j["mean_j"] <= 1
    assert os.path.isfile(os.path.join(out, "davis_j.json"))
    # the annotations themselves score J = 1
    ann = os.path.join(data, "Annotations", "480p")
    assert csm.main(["--davis_path", data, "--prediction_path", ann])["mean_j"] == 1.0


def test_mae_checkpoints_load_their_encoder(tmp_path, monkeypatch):
    from ssvit.evaluation import video_segmentation as vs
    from ssvit.models import create_backbone
    monkeypatch.setitem(vs.MAE_ARCHS, "mae", ("vit_pico", 8))  # the real one is vit_base/16: too big for a test
    enc = create_backbone("vit_pico", patch_size=8, num_classes=0, img_size=32)
    sd = dict(enc.state_dict(), mask_token=torch.zeros(1, 1, 64), **{"decoder_embed.weight": torch.zeros(64, 96)})
    path = str(tmp_path / "mae.pth")
    torch.save({"model": sd, "epoch": 3, "args": None}, path)
    model = vs.build_propagation_backbone("mae", 8, path)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model.get_intermediate_layers(x)[0], enc.eval().get_intermediate_layers(x)[0])
    with pytest.raises(ValueError, match="patch 8"):
        vs.build_propagation_backbone("mae", 16, path)
    with pytest.raises(ValueError, match="not reproduced"):
        vs.build_propagation_backbone("resnet50", 16, path)


@pytest.mark.parametrize("command,args,msg", [
    ("propagate", ["--data_path", "/nonexistent"], "video list not found"),
    ("propagate", ["--layout", "ipace", "--data_path", "/nonexistent"], "--data_path not found"),
    ("seg-metrics", ["--prediction_path", "x"], "give --dataset_path"),
])
def test_bad_input_is_one_line_and_exit_2(command, args, msg):
    r = subprocess.run([sys.executable, "-m", "ssvit", command, *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_weights_and_zero_queue_exit_2(tmp_path, tiny_vit_checkpoint):
    data = str(tmp_path / "davis")
    write_davis(data, n_sequences=1, n_frames=3, size=(40, 40))
    assert evs.cli(["--data_path", data, "--arch", "vit_pico", "--patch_size", "8", "--device", "cpu"]) == 2
    assert evs.cli(["--data_path", data, "--arch", "vit_pico", "--patch_size", "8", "--device", "cpu",
                    "--pretrained_weights", tiny_vit_checkpoint, "--n_last_frames", "0",
                    "--output_dir", str(tmp_path / "o")]) == 2
    assert evs.cli(["--data_path", data, "--short_side", "100"]) == 2  # not a multiple of the patch
