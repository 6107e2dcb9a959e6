"""ResNet (torchvision) and XCiT (timm) backbones: DINO's --arch resnet50 / xcit_*, the originals' layouts."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from ssvit.models import create_backbone
from ssvit.models.loading import load_backbone_state, read_pretrained_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resnet50_is_torchvisions_without_fc_and_loads_dinos_and_torchvisions_files(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    ours = create_backbone("resnet50", patch_size=16, drop_path_rate=0.1, img_size=224).eval()
    assert set(ours.state_dict()) == {k for k in tv.state_dict() if not k.startswith("fc.")}
    assert sum(p.numel() for p in ours.parameters()) == 23_508_032  # DINO README: 23M
    load_backbone_state(ours, tv.state_dict(), "resnet50")  # a classification checkpoint: its fc is dropped
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))
        f = ours.forward_features(x)
    assert f.cls.shape == (2, 2048) and f.patch_tokens.shape == (2, 2 * 3, 2048)
    torch.testing.assert_close(f.patch_tokens.mean(1), f.cls)  # the pooled feature is the tokens' mean
    # DINO's full checkpoint: teacher under module.backbone.* (its teacher has BatchNorm, so it was DDP-wrapped)
    full = {"teacher": {f"module.backbone.{k}": v for k, v in ours.state_dict().items()}, "epoch": 100}
    torch.save(full, tmp_path / "full.pth")
    other = create_backbone("resnet50").eval()
    load_backbone_state(other, read_pretrained_state(str(tmp_path / "full.pth"), "teacher"), "resnet50")
    with torch.no_grad():
        assert torch.equal(other(x), ours(x))


def _official_xcit_layout(sd):
    """timm's XCiT state dict -> the facebookresearch/xcit layout (pos_embeder, class-attention qkv)."""
    out = {}
    for k, v in sd.items():
        out[k.replace("pos_embed.", "pos_embeder.")] = v
    i = 0
    while f"cls_attn_blocks.{i}.attn.q.weight" in sd:
        p = f"cls_attn_blocks.{i}.attn."
        out[p + "qkv.weight"] = torch.cat([out.pop(p + s + ".weight") for s in "qkv"])
        out[p + "qkv.bias"] = torch.cat([out.pop(p + s + ".bias") for s in "qkv"])
        i += 1
    return out


def test_xcit_matches_timm_and_loads_the_official_layout():
    import timm
    torch.manual_seed(0)
    ref = timm.create_model("xcit_small_12_p16_224", num_classes=0).eval()
    ours = create_backbone("xcit_small_12_p16", patch_size=8, drop_path_rate=0.1).eval()  # the name's patch wins
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == 25_868_304  # XCiT-S12/16: DINO README 26M
    official = _official_xcit_layout(ref.state_dict())
    assert "pos_embeder.token_projection.weight" in official and "cls_attn_blocks.0.attn.qkv.weight" in official
    load_backbone_state(ours, official, "xcit_small_12_p16")
    x = torch.randn(2, 3, 96, 96)  # DINO's local crop size: any multiple of the patch
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
        f = ours.forward_features(x)
    assert f.cls.shape == (2, 384) and f.patch_tokens.shape == (2, 36, 384)
    assert create_backbone("xcit_medium_24_p8").patch_embed.patch_size == 8


TINY = ["--dataset", "synthetic", "--synthetic_size", "16", "--global_crops_size", "32", "--local_crops_size", "16",
        "--local_crops_number", "2", "--out_dim", "64", "--head_hidden_dim", "64", "--head_bottleneck_dim", "32",
        "--batch_size_per_gpu", "4", "--epochs", "1", "--num_workers", "0", "--tensorboard", "false", "--device", "cpu"]


@pytest.mark.parametrize("arch, extra", [
    ("resnet18", ["--optimizer", "sgd", "--weight_decay", "1e-4", "--weight_decay_end", "1e-4",
                  "--global_crops_scale", "0.14", "1", "--local_crops_scale", "0.05", "0.14"]),  # DINO README's
    ("xcit_pico", []),
])
def test_dino_trains_convnets_and_xcit_with_the_original_checkpoint_layout(tmp_path, arch, extra):
    out = tmp_path / arch
    p = subprocess.run([sys.executable, os.path.join(ROOT, "main_pretrain.py"), "--arch", arch, *TINY, *extra,
                        "--output_dir", str(out)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    from ssvit.utils.checkpoint import load_checkpoint
    ck = load_checkpoint(str(out / "checkpoint.pth"))
    first = "conv1.weight" if arch.startswith("resnet") else "cls_token"
    assert f"module.backbone.{first}" in ck["student"]
    # both have BatchNorm (ResNet; XCiT's convolutional patch embedding): DINO DDP-wraps such a teacher
    assert f"module.backbone.{first}" in ck["teacher"] and not any(k.startswith("module.backbone.fc.") for k in ck["teacher"])
    model = create_backbone(arch).eval()
    load_backbone_state(model, read_pretrained_state(str(out / "checkpoint.pth"), "teacher"), arch)


def test_ibot_refuses_backbones_without_maskable_patch_tokens():
    from ssvit.cli.pretrain import get_args_parser
    from ssvit.methods.ibot import iBOT
    args = get_args_parser(["--method", "ibot"]).parse_args(["--method", "ibot", "--arch", "resnet50"])
    with pytest.raises(ValueError, match="takes no patch masks"):
        iBOT.check_args(args)
