"""ssvit.evaluation.run_summary: the loss curve read back from a run folder, and the summary picture."""
import json
import os
import time

import numpy as np
import pytest

from ssvit.evaluation.run_summary import save_summary_figure, training_loss_curve


def test_loss_curve_from_tensorboard_events_across_a_resume(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path / "tb"))
    for step, loss in ((0, 6.9), (50, 6.1), (100, 5.5)):
        w.add_scalar("iter/loss", loss, step)
        w.add_scalar("iter/lr", 0.1, step)  # other tags are not mixed in
    w.close()
    time.sleep(1.1)  # event file names carry the second they were created
    w = SummaryWriter(str(tmp_path / "tb"))  # a resumed run: step 100 logged again, then new steps
    for step, loss in ((100, 5.4), (150, 5.0)):
        w.add_scalar("iter/loss", loss, step)
    w.close()
    steps, losses, unit = training_loss_curve(str(tmp_path))
    assert unit == "iteration" and steps == [0, 50, 100, 150]
    np.testing.assert_allclose(losses, [6.9, 6.1, 5.4, 5.0], rtol=1e-6)


def test_loss_curve_falls_back_to_log_txt_and_to_nothing(tmp_path):
    assert training_loss_curve(str(tmp_path)) == ([], [], "epoch")
    with open(tmp_path / "log.txt", "w") as f:
        for rec in ({"train_loss": 7.0, "epoch": 0}, {"resume_changes": {}}, {"train_loss": 6.0, "epoch": 1}):
            f.write(json.dumps(rec) + "\n")
        f.write("{not json\n")
    assert training_loss_curve(str(tmp_path)) == ([0, 1], [7.0, 6.0], "epoch")


@pytest.mark.parametrize("curve", [([0, 10, 20], [6.9, 6.0, 5.2], "iteration"), ([], [], "epoch")])
def test_summary_figure_is_a_png_with_both_panels(tmp_path, curve):
    from PIL import Image
    path = save_summary_figure({"dino_teacher": 61.2, "random_init": 54.3, "raw_pixels": 85.2}, curve,
                               str(tmp_path / "sub" / "summary.png"), title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1210, 440)
        pixels = np.asarray(im.convert("RGB"))
    # the bars are drawn in their colours: the trained / random rows blue, the pixel reference grey
    assert (np.abs(pixels.astype(int) - [0x4c, 0x72, 0xb0]).sum(-1) == 0).sum() > 2000
    assert (np.abs(pixels.astype(int) - [0x8c, 0x8c, 0x8c]).sum(-1) == 0).sum() > 1000
    assert os.path.getsize(path) > 10000
