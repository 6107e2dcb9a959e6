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
                                                           "MODEL.NUM_CLASSES", "0"])
    spec = cfg["MODEL"]["SPEC"]
    assert spec["WINDOW_SIZE"] == 14 and spec["DEPTHS"] == [1, 1, 2, 1] and cfg["MODEL"]["NAME"] == "swin"
    assert cfg["MODEL"]["NUM_CLASSES"] == 0 and cfg["TRAIN"]["IMAGE_SIZE"] == [224, 224]
    # yacs' merge_from_list: a key neither in the files nor in EsViT's defaults is an error (MODEL.SPEC's
    # new_allowed applies to files only), so is a value of another type, and so is a flag argparse's REMAINDER
    # swallowed into the overrides (EsViT's yacs fails on it as a non-existent key; ssvit says why)
    for opts, msg in ((["MODEL.SPEC.MSVIT.ARCH", "l1,h3,d96"], "non-existent key"),
                      (["TRAIN.LR", "'fast'"], "type mismatch, float expected"),
                      (["MODEL.SPEC.WINDOW_SIZE", "7", "--epochs", "3"], "comes after the KEY VALUE overrides")):
        with pytest.raises(ValueError, match=msg):
            load_esvit_config(str(tmp_path / "child.yaml"), opts)
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
    from ssvit.cli.pretrain import main
    from ssvit.utils.checkpoint import load_checkpoint
    from ssvit.models.loading import load_pretrained_weights
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


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "esvit")


@pytest.mark.parametrize("name,arch,params", [("cvt_v4_s1", "cvt_tiny", 29_303_616),  # spec backbones.md §4.1
                                              ("cvt_v4_s3", "cvt_small", 22_620_160)])  # measured on the original
def test_esvit_cvt_config_files_build_the_spec_models(name, arch, params):
    from ssvit.models.esvit_config import backbone_kwargs_from_cfg
    kw = backbone_kwargs_from_cfg(arch, load_esvit_config(os.path.join(CONFIGS, name + ".yaml")))
    assert kw["img_size"] == 224 and kw["window_sizes"] == [7, 7, 7, 7] and kw["init"] == "trunc_norm"
    with torch.device("meta"):  # layout only
        m = create_backbone(arch, **kw)
    assert sum(p.numel() for p in m.parameters()) == params
    s1 = name.endswith("s1")
    assert m.depths == ((2, 2, 6, 2) if s1 else (2, 2, 10, 4))
    assert m.num_heads == ((1, 3, 6, 12) if s1 else (2, 4, 8, 16))
    assert m.shift == (False,) * 4 and not m.rel_pos_embed and not m.res_stem
    dpr = [b.drop_prob for b in m.modules() if type(b).__name__ == "DropPath"]
    assert max(dpr) == pytest.approx(0.1 if s1 else 0.2)


def test_esvit_vil_config_files():
    from ssvit.models.esvit_config import backbone_kwargs_from_cfg
    from ssvit.models.vision_longformer import VIL_2262_ARCH, VIL_SMALL_ARCH, SlidingChunkAttention
    base = load_esvit_config(os.path.join(CONFIGS, "vil_small_base.yaml"))
    msvit = base["MODEL"]["SPEC"]["MSVIT"]
    assert msvit["ARCH"] == VIL_SMALL_ARCH and msvit["MODE"] == 0 and msvit["VIL_MODE_SWITCH"] == 0.5
    small = create_backbone("vil", **backbone_kwargs_from_cfg("vil", base))
    assert small.depths == [1, 2, 8, 1] and small.num_features == 768 and small.drop_path_rate == pytest.approx(0.1)
    assert small.layer1[0].norm_embed is not None and hasattr(small.layer1[0], "x_pos_embed")  # a1: absolute
    a = small.layer1[1].attn
    assert a.query_global is a.query and a.mode == 0  # SHARE_W
    cfg = load_esvit_config(os.path.join(CONFIGS, "vil_2262.yaml"))  # BASE vil_small_base.yaml + README overrides
    msvit = cfg["MODEL"]["SPEC"]["MSVIT"]
    assert msvit["ARCH"] == VIL_2262_ARCH and msvit["MODE"] == 1 and msvit["VIL_MODE_SWITCH"] == 0.75
    assert msvit["SHARE_W"] is True and cfg["MODEL"]["SPEC"]["DROP_PATH"] == 0.1  # inherited
    m = create_backbone("vil_2262", **backbone_kwargs_from_cfg("vil_2262", cfg))
    assert sum(p.numel() for p in m.parameters()) == 27_569_352  # spec backbones.md §5.1
    assert [s.mode for s in m.modules() if isinstance(s, SlidingChunkAttention)] == [1] * 4
    with pytest.raises(ValueError, match="fixed arch"):  # the base file's arch needs the README's override
        create_backbone("vil_2262", **backbone_kwargs_from_cfg("vil_2262", base))


@pytest.mark.parametrize("arch,name", [("cvt_tiny", "cvt_v4_s1"), ("vil_2262", "vil_2262")])
def test_esvit_main_pretrain_accepts_the_config_files(arch, name):
    import warnings

    from ssvit.cli.pretrain import get_args_parser
    from ssvit.config import parse_with_config
    from ssvit.engine.trainer import validate_args
    from ssvit.methods import get_method
    flags = ["--method", "esvit", "--arch", arch, "--aug-opt", "dino_aug",
             "--cfg", os.path.join(CONFIGS, name + ".yaml")]
    args = parse_with_config(get_args_parser(flags), flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validate_args(args)
    cls = get_method("esvit")
    cls.check_args(args)
    student, teacher = cls.build_backbones(args)  # full size, no heads
    n = 29_303_616 if arch == "cvt_tiny" else 27_569_352
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in teacher.parameters()) == n
    s_dpr = [b.drop_prob for b in student.modules() if type(b).__name__ == "DropPath"]
    assert max(s_dpr) == pytest.approx(0.1)  # the config's drop path; the teacher has none
    assert not any(type(b).__name__ == "DropPath" and b.drop_prob > 0 for b in teacher.modules())


def test_fashion_mnist_esvit_config_builds_the_two_stage_swin_it_documents():
    """configs/fashion_mnist_esvit_swin.yaml (the measured F-MNIST run): 2-stage Swin, patch 4, C 96 -> 192,
    16 region tokens per 28-px global crop and 4 per 12-px local crop, dense heads, no loader workers."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    m, args = build_method(["--config", os.path.join(root, "configs", "fashion_mnist_esvit_swin.yaml"),
                            "--out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16"])
    assert args.cfg.endswith("swin_fmnist_p4.yaml") and args.num_workers == 0 and args.use_dense_prediction
    s = m.student.backbone
    assert s.patch_embed.proj.kernel_size == (4, 4) and len(s.layers) == 2 and s.num_features == 192
    with torch.no_grad():
        pooled, tokens = s.eval().forward_dense(torch.randn(2, 3, 28, 28))
        _, local_tokens = s.forward_dense(torch.randn(2, 3, 12, 12))
    assert pooled.shape == (2, 192) and tokens.shape == (2, 16, 192) and local_tokens.shape == (2, 4, 192)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
