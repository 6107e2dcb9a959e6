"""ViT layout, pos-embed interpolation, attention maps, DINO head and multi-crop wrapper."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssvit.models import DINOHead, MultiCropWrapper, WeightNormLinear, create_backbone, interpolate_pos_encoding


def dino_vit_small_keys():
    """The 150 keys of the original DINO ViT-S/16 backbone (spec backbones.md §8.1)."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(12):
        for n in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                  "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                  "mlp.fc2.bias"):
            keys.append(f"blocks.{i}.{n}")
    return keys + ["norm.weight", "norm.bias"]


@pytest.mark.parametrize("arch,dim,params", [("vit_tiny", 192, 5_524_416), ("vit_small", 384, 21_665_664)])
def test_vit_layout_matches_original(arch, dim, params):
    m = create_backbone(arch, patch_size=16)
    sd = m.state_dict()
    assert list(sd) == dino_vit_small_keys()
    assert sd["pos_embed"].shape == (1, 197, dim) and sd["blocks.0.attn.qkv.weight"].shape == (3 * dim, dim)
    assert sum(p.numel() for p in m.parameters()) == params
    assert m.norm.eps == 1e-6


def test_vit_shallow_is_one_wide_block():
    """The default job's backbone: D=256, 1 block, 8 heads, MLP 1x; parameters counted by hand at 28 px."""
    m = create_backbone("vit_shallow", img_size=28)
    sd = m.state_dict()
    assert m.patch_embed.proj.kernel_size == (7, 7) and len(m.blocks) == 1 and m.blocks[0].attn.num_heads == 8
    assert sd["pos_embed"].shape == (1, 17, 256) and sd["blocks.0.mlp.fc1.weight"].shape == (256, 256)
    block = 2 * 512 + (256 * 768 + 768) + (256 * 256 + 256) + (256 * 256 + 256) + (256 * 256 + 256)
    assert sum(p.numel() for p in m.parameters()) == (3 * 49 * 256 + 256) + 256 + 17 * 256 + block + 512


def test_patch8_layout():
    sd = create_backbone("vit_small", patch_size=8).state_dict()
    assert sd["pos_embed"].shape == (1, 785, 384) and sd["patch_embed.proj.weight"].shape == (384, 3, 8, 8)


def test_pos_embed_interpolation_uses_dino_scale_factor_quirk():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 14 * 14, 8)
    out = interpolate_pos_encoding(pe, 6, 6)
    assert out.shape == (1, 37, 8)
    assert torch.equal(out[:, 0], pe[:, 0])  # CLS slot kept
    grid = pe[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(6.1 / 14, 6.1 / 14), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 36, 8))
    by_size = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 8)
    assert (out[:, 1:] - by_size).abs().max() > 1e-2  # differs from size-based resampling
    assert interpolate_pos_encoding(pe, 14, 14) is pe  # same square grid: unchanged
    rect = interpolate_pos_encoding(pe, 4, 7)
    assert rect.shape == (1, 29, 8)


def test_any_input_size_and_outputs():
    torch.manual_seed(0)
    m = create_backbone("vit_pico", patch_size=4, img_size=32).eval()
    for size in [(32, 32), (16, 16), (20, 28)]:
        x = torch.randn(2, 3, *size)
        cls = m(x)
        assert cls.shape == (2, 96)
        tokens = m.forward_tokens(x)
        n = (size[0] // 4) * (size[1] // 4)
        assert tokens.shape == (2, 1 + n, 96)
        torch.testing.assert_close(cls, tokens[:, 0])
        attn = m.get_last_selfattention(x)
        assert attn.shape == (2, 3, 1 + n, 1 + n)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 1 + n))
    inter = m.get_intermediate_layers(torch.randn(1, 3, 16, 16), n=2)
    assert len(inter) == 2 and inter[-1].shape == (1, 17, 96)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(m.get_intermediate_layers(x, n=1)[0], m.forward_tokens(x))


def test_attention_map_matches_explicit_block_computation():
    torch.manual_seed(0)
    m = create_backbone("vit_pico", patch_size=4, img_size=16).eval()
    x = torch.randn(1, 3, 16, 16)
    tokens = m.prepare_tokens(x)
    for blk in m.blocks[:-1]:
        tokens = blk(tokens)
    last = m.blocks[-1]
    y = last.norm1(tokens)
    qkv = last.attn.qkv(y).reshape(1, 17, 3, 3, 32).permute(2, 0, 3, 1, 4)
    ref = (qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(32)).softmax(-1)
    torch.testing.assert_close(m.get_last_selfattention(x), ref)
    # the fused-attention forward equals the explicit one
    out_fused = last(tokens)
    attn_out = (ref @ qkv[2]).transpose(1, 2).reshape(1, 17, 96)
    expected = tokens + last.attn.proj(attn_out)
    expected = expected + last.mlp(last.norm2(expected))
    torch.testing.assert_close(out_fused, expected, rtol=1e-5, atol=1e-5)


def test_all_selfattention_every_block_recomputed_by_hand():
    torch.manual_seed(0)
    m = create_backbone("vit_pico", patch_size=4, img_size=28).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        attns = m.get_all_selfattention(x)
        assert len(attns) == len(m.blocks) == 4
        assert torch.equal(attns[-1], m.get_last_selfattention(x))
        tokens = m.prepare_tokens(x)
        for k, blk in enumerate(m.blocks):
            assert attns[k].shape == (2, 3, 50, 50)
            torch.testing.assert_close(attns[k].sum(-1), torch.ones(2, 3, 50))
            # by hand from block k's input: LayerNorm, fused qkv linear, per-head softmax(q k^T / sqrt(32))
            y = F.layer_norm(tokens, (96,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
            q, kk, _ = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).reshape(2, 50, 3, 3, 32).permute(2, 0, 3, 1, 4)
            torch.testing.assert_close(attns[k], (q @ kk.transpose(-2, -1) / math.sqrt(32)).softmax(-1))
            tokens = blk(tokens)
        assert (attns[0] - attns[1]).abs().max() > 1e-3  # distinct blocks, not one map repeated


def test_weightnorm_linear_equals_legacy_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormLinear(5, 7)
    with torch.no_grad():
        ours.weight_g.uniform_(0.5, 2)
    legacy = torch.nn.utils.weight_norm(torch.nn.Linear(5, 7, bias=False))
    legacy.weight_g.data.copy_(ours.weight_g.data)
    legacy.weight_v.data.copy_(ours.weight_v.data)
    x = torch.randn(3, 5)
    torch.testing.assert_close(ours(x), legacy(x))
    ours(x).pow(2).sum().backward()
    legacy(x).pow(2).sum().backward()
    torch.testing.assert_close(ours.weight_v.grad, legacy.weight_v.grad)
    torch.testing.assert_close(ours.weight_g.grad, legacy.weight_g.grad)


def test_dino_head_layout_and_normalised_prototypes():
    head = DINOHead(384, 65536)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {"mlp.0.weight": (2048, 384), "mlp.0.bias": (2048,), "mlp.2.weight": (2048, 2048),
                      "mlp.2.bias": (2048,), "mlp.4.weight": (256, 2048), "mlp.4.bias": (256,),
                      "last_layer.weight_g": (65536, 1), "last_layer.weight_v": (65536, 256)}
    assert not head.last_layer.weight_g.requires_grad and torch.all(head.last_layer.weight_g == 1)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(65536), atol=1e-5)
    bn = DINOHead(16, 8, use_bn=True, hidden_dim=32, bottleneck_dim=4)
    assert {k.split(".")[1] for k in bn.state_dict() if k.startswith("mlp.")} == {"0", "1", "3", "4", "6"}
    assert DINOHead(16, 8, norm_last_layer=False, hidden_dim=32, bottleneck_dim=4).last_layer.weight_g.requires_grad


def test_multicrop_wrapper_groups_by_resolution():
    torch.manual_seed(0)
    calls = []
    backbone = create_backbone("vit_pico", patch_size=4, img_size=32)
    backbone.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    w = MultiCropWrapper(backbone, DINOHead(96, 10, hidden_dim=16, bottleneck_dim=8))
    crops = [torch.randn(2, 3, 32, 32)] * 2 + [torch.randn(2, 3, 16, 16)] * 3
    out = w(crops)
    assert out.shape == (10, 10)
    assert calls == [(4, 3, 32, 32), (6, 3, 16, 16)]
    # crop-major order: rows 0-1 are crop 0
    torch.testing.assert_close(out[:2], w(crops[0]))
    assert "backbone.cls_token" in w.state_dict() and "head.last_layer.weight_v" in w.state_dict()


def test_registry_errors_and_aliases():
    with pytest.raises(ValueError, match="unknown architecture 'vit_huge'"):
        create_backbone("vit_huge")
    assert create_backbone("deit_tiny").embed_dim == 192
