"""EsViT's correspondence analysis: cell geometry, flip scoring, and the analysis script end to end."""
import json
import os
import sys

import pytest
import torch

from ssvit.evaluation.correspondence import cell_centres, flip_correspondence, match_tokens, top_matches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cell_centres_swin_grid():
    coords, cell = cell_centres(49, 224)
    assert cell == 32 and coords.shape == (2, 49)
    assert coords[:, 0].tolist() == [16, 16] and coords[:, 8].tolist() == [48, 48]  # row 1, col 1
    assert coords[:, 6].tolist() == [16, 208]
    with pytest.raises(ValueError, match="square"):
        cell_centres(50, 224)


def test_flip_correspondence_perfect_and_shifted_matches():
    torch.manual_seed(0)
    side, c = 4, 16
    grid = torch.randn(side, side, c)
    fea1 = grid.reshape(-1, c)
    mirrored = grid.flip(1).reshape(-1, c)  # token (r, s) of the mirror = token (r, side-1-s) of the image
    r = flip_correspondence(fea1, mirrored, width=64)
    assert r["accuracy"] == 1.0 and r["distance_error"] == 0.0 and r["sim_value"] == pytest.approx(1.0)
    # the mirror shifted by one column (cyclic): per row three matches land one cell (16 px) from
    # the mirrored cell and the wrapped one three cells (48 px) -> mean over all 16 tokens 24 px
    shifted = grid.flip(1).roll(1, dims=1).reshape(-1, c)
    r = flip_correspondence(fea1, shifted, width=64, k=16)
    assert r["accuracy"] == 0.0 and r["distance_error"] == pytest.approx(24.0)


def test_match_and_top_order_is_stable_for_ties():
    fea1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    fea2 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    sim, idx = match_tokens(fea1, fea2)
    assert idx.tolist() == [0, 1, 0, 0]
    assert top_matches(sim, 3).tolist() == [0, 1, 2]  # three ties at 1.0 keep token order


def test_analyze_models_script_writes_pngs_and_json(tmp_path):
    from ssvit.cli import analyze as analyze_models

    from ssvit.models import create_backbone
    torch.manual_seed(0)
    ckpt = tmp_path / "vit.pth"
    torch.save({"teacher": create_backbone("vit_pico", patch_size=4, img_size=32).state_dict()}, ckpt)
    common = ["--arch", "vit_pico", "--patch_size", "4", "--pretrained_weights", str(ckpt), "--image_size", "32",
              "--output_dir", str(tmp_path / "out")]
    out = analyze_models.main(common + ["--vis_correspondence", "true", "--vis_attention", "true"])
    assert os.path.getsize(out["correspondence_png"]) > 1000
    assert len(out["attention_pngs"]) == 3 + 1  # vit_pico: 3 heads + the grid
    out = analyze_models.main(common + ["--measure_correspondence", "true", "--dataset", "synthetic",
                                        "--max_images", "3"])
    saved = json.loads((tmp_path / "out" / "synthetic" / "measure_correspondence.json").read_text())
    assert saved == out["measure"] and saved["count"] == 3
    assert 0.0 <= saved["accuracy_avg"] <= 1.0 and saved["distance_error_avg"] >= 0.0
    with pytest.raises(ValueError, match="choose at least one"):
        analyze_models.main(common)
