"""EsViT method: wrapper outputs and key layout, flags, config files, training on a fixed batch, the
run -> checkpoint -> k-NN loading path."""
import os

import pytest
import torch

from method_helpers import build_method, train_on_fixed_batch
from ssvit.models import DINOHead, create_backbone
from ssvit.models.esvit_config import load_esvit_config
from ssvit.models.esvit_wrapper import EsViTWrapper

VIT = ["--method", "esvit", "--arch", "vit_pico", "--patch_size", "4", "--global_crops_size", "32",
       "--out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--epochs", "2",
       "--batch_size_per_gpu", "4"]


def crops(b=2, g=32, l_size=16, n_local=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, g, g, generator=gen) for _ in range(2)] + \
        [torch.randn(b, 3, l_size, l_size, generator=gen) for _ in range(n_local)]


def test_wrapper_dense_outputs_follow_esvit_row_order():
    torch.manual_seed(0)
    vit = create_backbone("vit_pico", patch_size=4, img_size=32)
    w = EsViTWrapper(vit, DINOHead(96, 10, hidden_dim=16, bottleneck_dim=8),
                     DINOHead(96, 10, hidden_dim=16, bottleneck_dim=8), use_dense_prediction=True).eval()
    x = crops()
    cls_out, region_out, fea, npatch = w(x)
    assert npatch == [64, 16] and cls_out.shape == (8, 10)
    assert fea.shape == (2 * 2 * 64 + 2 * 2 * 16, 96) and region_out.shape == (fea.shape[0], 10)
    # rows: crop-major, then image, then token -- the 2nd image's 3rd token of global crop 1:
    cls1, tok1 = vit.forward_dense(x[1])
    torch.testing.assert_close(fea[2 * 64 + 1 * 64 + 2], tok1[1, 2])
    torch.testing.assert_close(cls_out[2:4], w.head(cls1))
    torch.testing.assert_close(region_out[:64], w.head_dense(fea[:64]))
    # view-only mode: DINO's MultiCropWrapper output
    w.use_dense_prediction = False
    assert w(x).shape == (8, 10)


def test_wrapper_state_dict_uses_esvit_flat_layout_and_round_trips():
    torch.manual_seed(0)
    w = EsViTWrapper(create_backbone("vit_pico", patch_size=4, img_size=32), DINOHead(96, 10, hidden_dim=16,
                     bottleneck_dim=8), DINOHead(96, 10, hidden_dim=16, bottleneck_dim=8), use_dense_prediction=True)
    sd = w.state_dict()
    keys = list(sd)
    assert not any(k.startswith("backbone.") for k in keys)
    assert keys[0] == "cls_token" and "blocks.0.attn.qkv.weight" in sd and "norm.weight" in sd
    assert [k for k in keys if k.startswith("head.")][0] == "head.mlp.0.weight"
    assert keys[-1].startswith("head_dense.")  # EsViT order: backbone, head, head_dense
    # an EsViT-style student dict (module. prefix stripped) loads strictly and sets the values
    other = EsViTWrapper(create_backbone("vit_pico", patch_size=4, img_size=32), DINOHead(96, 10, hidden_dim=16,
                         bottleneck_dim=8), DINOHead(96, 10, hidden_dim=16, bottleneck_dim=8), use_dense_prediction=True)
    other.load_state_dict({k: v.clone() for k, v in sd.items()})
    assert torch.equal(other.backbone.pos_embed, w.backbone.pos_embed)
    assert torch.equal(other.head_dense.last_layer.weight_v, w.head_dense.last_layer.weight_v)
    with pytest.raises(RuntimeError, match="head_dense"):  # a dense checkpoint into a view-only model
        EsViTWrapper(create_backbone("vit_pico", patch_size=4, img_size=32),
                     DINOHead(96, 10, hidden_dim=16, bottleneck_dim=8)).load_state_dict(sd)


def test_esvit_vit_pos_embed_rule_has_no_dino_offset():
    from ssvit.models.vision_transformer import interpolate_pos_encoding, interpolate_pos_encoding_esvit
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 64, 5)
    out = interpolate_pos_encoding_esvit(pe, 16)
    ref = torch.nn.functional.interpolate(pe[:, 1:].reshape(1, 8, 8, 5).permute(0, 3, 1, 2), size=(4, 4),
                                          mode="bicubic", align_corners=False)
    # sqrt(16/64) = 0.5 exactly: same sampling as size-based resizing; DINO's +0.1 differs
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 16, 5))
    assert not torch.allclose(interpolate_pos_encoding(pe, 4, 4)[:, 1:], out[:, 1:])
    assert torch.equal(interpolate_pos_encoding_esvit(pe, 64), pe)


def test_esvit_flags_defaults_and_errors():
    m, args = build_method(VIT)
    assert args.local_crops_number == [8] and args.local_crops_size == [96] and args.saveckp_freq == 5
    assert isinstance(m.criterion, type(m.criterion)) and m.criterion.ncrops == 10
    assert m.student.backbone.pos_embed_rule == "esvit" and m.student.head_dense is None
    dpr = [b.drop_path1.drop_prob for b in m.student.backbone.blocks if hasattr(b.drop_path1, "drop_prob")]
    assert dpr and max(dpr) == pytest.approx(0.1)  # EsViT's hard-coded ViT student drop path
    m, args = build_method(VIT + ["--use_dense_prediction", "true", "--local_crops_number", "2",
                                  "--local_crops_size", "16"])
    assert type(m.criterion).__name__ == "DDINOLoss" and m.criterion.ncrops == 4
    for bad, msg in ((["--local_crops_number", "2", "2", "--local_crops_size", "16", "24",
                       "--use_dense_prediction", "true"], "single --local_crops_size"),
                     (["--local_crops_number", "2", "2"], "one count per size"),
                     (["--aug-opt", "mocov2_aug"], "aug-opt"),
                     (["--zip_mode", "true"], "image folder"),
                     (["MODEL.SPEC.X", "1"], "need --cfg")):
        with pytest.raises(ValueError, match=msg):
            build_method(VIT + bad)


def test_esvit_multiple_local_sizes_view_level_transform():
    from PIL import Image
    m, args = build_method(VIT + ["--local_crops_number", "2", "1", "--local_crops_size", "16", "24"])
    out = m.build_transform(args)(Image.new("RGB", (40, 40), (120, 30, 200)))
    assert [c.shape[-1] for c in out] == [32, 32, 16, 16, 24]
    assert m.criterion.ncrops == 5


def test_esvit_config_file_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  NAME: swin\n  SPEC:\n    DEPTHS: [2, 2, 6, 2]\n    WINDOW_SIZE: 7\n"
                                        "TRAIN:\n  IMAGE_SIZE: [224, 224]\n")
    (tmp_path / "child.yaml").write_text("BASE: ['base.yaml']\nMODEL:\n  SPEC:\n    WINDOW_SIZE: 14\n")
    cfg = load_esvit_config(str(tmp_path / "child.yaml"), ["MODEL.SPEC.DEPTHS", "[1, 1, 2, 1]",
                                                           "MODEL.SPEC.MSVIT.ARCH", "l1,h3,d96"])
    spec = cfg["MODEL"]["SPEC"]
    assert spec["WINDOW_SIZE"] == 14 and spec["DEPTHS"] == [1, 1, 2, 1] and cfg["MODEL"]["NAME"] == "swin"
    assert spec["MSVIT"]["ARCH"] == "l1,h3,d96" and cfg["TRAIN"]["IMAGE_SIZE"] == [224, 224]
    with pytest.raises(ValueError, match="does not exist"):
        load_esvit_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "loop.yaml").write_text("BASE: ['loop.yaml']\n")
    with pytest.raises(ValueError, match="cycle"):
        load_esvit_config(str(tmp_path / "loop.yaml"))


@pytest.mark.parametrize("dense", ["true", "false"])
def test_esvit_vit_training_reduces_loss_on_a_fixed_batch(dense):
    torch.manual_seed(0)
    m, _ = build_method(VIT + ["--use_dense_prediction", dense, "--local_crops_number", "2",
                               "--local_crops_size", "16"])
    losses = train_on_fixed_batch(m, crops(b=4), steps=8)
    assert losses[-1] < losses[0] - 0.05, losses


def test_esvit_mixup_mixes_student_views_only():
    torch.manual_seed(0)
    m, _ = build_method(VIT + ["--use_mixup", "true", "--num_mixup_views", "1", "--local_crops_number", "1",
                               "--local_crops_size", "16"])
    x = crops(b=4, n_local=1)
    mixed, targets = m.mix_student_views(x)
    assert not torch.equal(mixed[0], x[0]) and torch.equal(mixed[1], x[1]) and torch.equal(mixed[2], x[2])
    assert targets[0].shape == (4, 4) and torch.allclose(targets[0].sum(1), torch.ones(4))
    assert torch.equal(targets[1], torch.eye(4))
    loss, _ = m.training_step(m.student, x, 0)
    assert torch.isfinite(loss)


def test_esvit_run_checkpoint_layout_and_knn_loading(tmp_path):
    from main_pretrain import main
    from ssvit.engine.checkpoint import load_checkpoint, load_pretrained_weights
    out = tmp_path / "run"
    rc = main(VIT + ["--dataset", "synthetic", "--synthetic_size", "16", "--local_crops_number", "2",
                     "--local_crops_size", "16", "--use_dense_prediction", "true", "--num_workers", "0",
                     "--epochs", "1", "--warmup_epochs", "0", "--output_dir", str(out)])
    assert rc == 0
    ck = load_checkpoint(str(out / "checkpoint.pth"))
    assert {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"} <= set(ck)
    assert set(ck["dino_loss"]) == {"center", "center_grid"}
    assert "module.cls_token" in ck["student"] and "module.head_dense.last_layer.weight_g" in ck["student"]
    assert "cls_token" in ck["teacher"] and "head_dense.mlp.0.weight" in ck["teacher"]
    assert not any(k.startswith(("backbone.", "module.backbone.")) for k in ck["teacher"] | ck["student"])
    assert os.path.isfile(out / "checkpoint0000.pth")  # EsViT saves numbered checkpoints at epoch 0 too
    vit = create_backbone("vit_pico", patch_size=4, img_size=32)
    load_pretrained_weights(vit, str(out / "checkpoint.pth"), "teacher", "vit_pico")
    torch.testing.assert_close(vit.pos_embed, ck["teacher"]["pos_embed"])


MULTISTAGE = ["--method", "esvit", "--global_crops_size", "64", "--out_dim", "64", "--head_hidden_dim", "32",
              "--head_bottleneck_dim", "16", "--epochs", "2", "--batch_size_per_gpu", "2",
              "--local_crops_number", "2", "--local_crops_size", "32", "--use_dense_prediction", "true"]


@pytest.mark.parametrize("arch", ["swin_pico", "cvt_pico", "vil_pico"])
def test_esvit_multistage_training_reduces_loss_and_matches_region_counts(arch):
    torch.manual_seed(0)
    m, _ = build_method(MULTISTAGE + ["--arch", arch])
    x = crops(b=2, g=64, l_size=32)
    with torch.no_grad():
        _, _, fea, npatch = m.student(x)
    assert len(npatch) == 2 and npatch[0] > npatch[1] >= 1 and fea.shape[0] == 2 * 2 * npatch[0] + 2 * 2 * npatch[1]
    losses = train_on_fixed_batch(m, x, steps=6)
    assert losses[-1] < losses[0] - 0.05, losses
    # EsViT key layout: the backbone's own keys next to head / head_dense
    keys = set(m.teacher.state_dict())
    assert "norm.weight" in keys and "head_dense.last_layer.weight_g" in keys
    assert not any(k.startswith("backbone.") for k in keys)


def test_esvit_cfg_file_builds_the_configured_swin_and_eval_reads_it(tmp_path):
    from ssvit.evaluation.knn import build_eval_backbone
    from ssvit.models.esvit_config import backbone_kwargs_from_cfg, load_esvit_config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = os.path.join(root, "configs", "esvit", "swin_fmnist.yaml")
    m, args = build_method(MULTISTAGE[:-6] + ["--arch", "swin_tiny", "--cfg", cfg, "--global_crops_size", "28",
                                              "--local_crops_number", "2", "--local_crops_size", "12"])
    s, t = m.student.backbone, m.teacher.backbone
    assert s.patch_embed.proj.kernel_size == (2, 2) and s.num_features == 192 and len(s.layers) == 3
    assert all(b.drop_path.__class__.__name__ == "Identity" for layer in t.layers for b in layer.blocks)
    # eval_knn.py --cfg: the same architecture loads the teacher of an EsViT-layout checkpoint
    sd = {"module." + k: v for k, v in m.teacher.state_dict().items()}
    torch.save({"teacher": sd}, tmp_path / "ck.pth")
    kw = backbone_kwargs_from_cfg("swin_tiny", load_esvit_config(cfg))
    model = build_eval_backbone("swin_tiny", 16, str(tmp_path / "ck.pth"), "teacher", **kw)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(model(x), t.eval()(x))
