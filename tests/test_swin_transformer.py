"""EsViT Swin backbone (ssvit.models.swin_transformer): layout, window rule, padding/masking, outputs.

Numerics are checked against naive re-implementations written here (explicit loops over windows and
token pairs, Swin's slice-based region labelling), not against the module's own helpers.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssvit.models.heads import DINOHead
from ssvit.models.registry import create_backbone
from ssvit.models.swin_transformer import (PatchMerging, SwinTransformer, SwinTransformerBlock, WindowAttention,
                                           shifted_window_mask, spec_to_kwargs)

SWIN_T_PARAMS = 27_519_354  # spec backbones.md §3.1 (parameters only; index buffers are not parameters)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """This file: many tiny ops, fastest on one thread (conftest.single_thread)."""


@pytest.fixture(scope="module")
def swin_t():
    torch.manual_seed(0)
    return create_backbone("swin_tiny")


@pytest.fixture(scope="module")
def swin_t_w14():
    return create_backbone("swin_tiny_w14")


@pytest.fixture(scope="module")
def pico():
    torch.manual_seed(0)
    return create_backbone("swin_pico", drop_path_rate=0.0).eval()


def expected_swin_t_layout(window: int = 7) -> dict[str, tuple]:
    """Spec §8.5 listing of the Swin-T backbone (without heads), in state-dict order."""
    out = {"patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.proj.bias": (96,),
           "patch_embed.norm.weight": (96,), "patch_embed.norm.bias": (96,)}
    for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        c = 96 * 2 ** i
        w = window if 56 // 2 ** i > window else 56 // 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            out.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                        p + "attn.relative_position_bias_table": ((2 * w - 1) ** 2, heads),
                        p + "attn.relative_position_index": (w * w, w * w),
                        p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                        p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                        p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                        p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                        p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
        if i < 3:
            out.update({f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
                        f"layers.{i}.downsample.norm.weight": (4 * c,), f"layers.{i}.downsample.norm.bias": (4 * c,)})
    out.update({"norm.weight": (768,), "norm.bias": (768,)})
    return out


# --- layout, init, registry ---------------------------------------------------------------------
def test_swin_tiny_param_count_and_exact_state_dict_layout(swin_t):
    assert sum(p.numel() for p in swin_t.parameters()) == SWIN_T_PARAMS
    sd = swin_t.state_dict()
    expected = expected_swin_t_layout()
    assert list(sd) == list(expected)  # same keys, same order (183 entries; 199 with the two DINO heads)
    assert len(sd) == 183
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    idx = [k for k in sd if k.endswith("relative_position_index")]
    assert len(idx) == 12 and all(sd[k].dtype == torch.int64 for k in idx)
    assert swin_t.embed_dim == 96 and swin_t.num_features == 768
    assert isinstance(swin_t.head, nn.Identity) and not hasattr(swin_t, "head_dense")
    assert swin_t.no_weight_decay() == {"absolute_pos_embed"}
    assert swin_t.no_weight_decay_keywords() == {"relative_position_bias_table"}


def test_swin_tiny_w14_tables(swin_t_w14):
    sd = swin_t_w14.state_dict()
    expected = expected_swin_t_layout(window=14)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sd["layers.2.blocks.5.attn.relative_position_bias_table"].shape == (729, 12)
    assert sd["layers.3.blocks.0.attn.relative_position_index"].shape == (49, 49)


def test_init_matches_original(swin_t):
    lns = [m for m in swin_t.modules() if isinstance(m, nn.LayerNorm)]
    assert len(lns) == 1 + 12 * 2 + 3 + 1
    assert all(m.eps == 1e-6 and torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in lns)
    linears = [m for m in swin_t.modules() if isinstance(m, nn.Linear)]
    assert all(m.bias is None or torch.all(m.bias == 0) for m in linears)
    w = torch.cat([m.weight.flatten() for m in linears])
    assert abs(w.std().item() - 0.02) < 1e-3 and w.abs().max() <= 2.0
    t = torch.cat([m.attn.relative_position_bias_table.flatten() for l in swin_t.layers for m in l.blocks])
    assert abs(t.std().item() - 0.02) < 2e-3


def test_window_rule_from_nominal_resolution(swin_t, swin_t_w14):
    def rule(m):
        return [[(b.window_size, b.shift_size) for b in l.blocks] for l in m.layers]
    assert rule(swin_t) == [[(7, 0), (7, 3)]] * 2 + [[(7, 0), (7, 3)] * 3, [(7, 0), (7, 0)]]
    assert rule(swin_t_w14) == [[(14, 0), (14, 7)]] * 2 + [[(14, 0)] * 6, [(7, 0), (7, 0)]]
    small = create_backbone("swin_pico", img_size=32)  # stage grids 8, 4, 2, 1
    assert rule(small) == [[(7, 0)], [(4, 0)], [(2, 0), (2, 0)], [(1, 0)]]


def test_registry_factories_and_kwargs(monkeypatch):
    import ssvit.models.swin_transformer as st
    m = create_backbone("swin", img_size=64, patch_size=16, num_classes=0, use_dense_prediction=True, foo=1)
    assert m.patch_embed.proj.kernel_size == (4, 4)  # uniform patch_size ignored, unknown kwargs swallowed
    dpr = [b.drop_path.drop_prob for l in m.layers for b in l.blocks if not isinstance(b.drop_path, nn.Identity)]
    assert max(dpr) == pytest.approx(0.1) and len(dpr) == 11  # linspace(0, 0.1, 12), first block 0
    # the configurations each factory passes (recorded instead of building 50-90 M-param models)
    monkeypatch.setattr(st, "SwinTransformer", lambda **kw: kw)
    t, s, b = dict(embed_dim=96, num_heads=[3, 6, 12, 24]), [2, 2, 18, 2], dict(embed_dim=128, num_heads=[4, 8, 16, 32])
    expected = {
        "swin_tiny": dict(t, depths=[2, 2, 6, 2], drop_path_rate=0.1, window_size=7),
        "swin_tiny_w14": dict(t, depths=[2, 2, 6, 2], drop_path_rate=0.1, window_size=14),
        "swin_small": dict(t, depths=s, drop_path_rate=0.2, window_size=7),
        "swin_small_w14": dict(t, depths=s, drop_path_rate=0.2, window_size=14),
        "swin_base": dict(b, depths=s, drop_path_rate=0.2, window_size=7),
        "swin_base_w14": dict(b, depths=s, drop_path_rate=0.2, window_size=14),
        "swin_large": dict(embed_dim=192, num_heads=[6, 12, 24, 48], depths=s, drop_path_rate=0.2, window_size=7),
        "swin_pico": dict(embed_dim=24, num_heads=[1, 2, 3, 4], depths=[1, 1, 2, 1], drop_path_rate=0.1, window_size=7),
    }
    for name, cfg in expected.items():
        assert create_backbone(name) == cfg, name
    assert create_backbone("swin_small", drop_path_rate=0.0, img_size=96, in_chans=1, patch_size=8, foo=None) == \
        dict(expected["swin_small"], drop_path_rate=0.0, img_size=96, in_chans=1)
    assert create_backbone("swin_tiny", window_size=14) == expected["swin_tiny_w14"]
    assert create_backbone("swin_base_w14", window_size=7)["window_size"] == 14


def test_spec_to_kwargs_builds_the_yaml_model():
    spec = {"PATCH_SIZE": 4, "DIM_EMBED": 96, "DEPTHS": [2, 2, 6, 2], "NUM_HEADS": [3, 6, 12, 24],
            "WINDOW_SIZE": 14, "MLP_RATIO": 4, "QKV_BIAS": True, "DROP_RATE": 0, "ATTN_DROP_RATE": 0,
            "DROP_PATH_RATE": 0.1, "USE_APE": False, "PATCH_NORM": True, "UNRELATED": 1}
    kw = spec_to_kwargs(spec)
    assert kw == dict(patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=14,
                      mlp_ratio=4, qkv_bias=True, drop_rate=0, attn_drop_rate=0, drop_path_rate=0.1, ape=False,
                      patch_norm=True)
    small = dict(kw, embed_dim=8, num_heads=[1, 1, 2, 2], ape=True)
    m = SwinTransformer(img_size=224, **small)
    assert m.absolute_pos_embed.shape == (1, 56 * 56, 8)
    assert m.layers[0].blocks[1].shift_size == 7
    via_factory = create_backbone("swin_tiny", **small)  # factory honours the spec kwargs (patch_size is 4 anyway)
    assert via_factory.absolute_pos_embed.shape == (1, 3136, 8) and via_factory.num_features == 64


# --- checkpoints ------------------------------------------------------------------------------------
def test_esvit_checkpoint_layout_loads():
    """EsViT keeps head/head_dense as attributes of the backbone: keys backbone + head.* + head_dense.*,
    with a ``module.`` prefix for the DDP student."""
    src = create_backbone("swin_pico")
    src.head = DINOHead(src.num_features, 64, hidden_dim=32, bottleneck_dim=16)
    src.head_dense = DINOHead(src.num_features, 64, hidden_dim=32, bottleneck_dim=16)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    ckpt = {"student": {f"module.{k}": v for k, v in src.state_dict().items()}}
    assert any(k.startswith("module.head_dense.last_layer") for k in ckpt["student"])
    sd = {k.replace("module.", ""): v for k, v in ckpt["student"].items()}
    # a model with the heads attached (the EsViT method's layout) loads everything strictly
    full = create_backbone("swin_pico")
    full.head, full.head_dense = (DINOHead(full.num_features, 64, hidden_dim=32, bottleneck_dim=16) for _ in range(2))
    full.load_state_dict(sd, strict=True)
    # the bare backbone loads after dropping the heads
    bare = create_backbone("swin_pico")
    bare.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("head.", "head_dense."))}, strict=True)
    for k, v in bare.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bare.eval()(x), src.eval().forward_dense(x)[0])
        assert full.head(full(x)).shape == (1, 64)


# --- naive references ------------------------------------------------------------------------------
def naive_relative_bias(table: torch.Tensor, w: int) -> torch.Tensor:
    """(heads, w*w, w*w) from the table by explicit (dy, dx) offsets of row-major tokens."""
    coords = [(i // w, i % w) for i in range(w * w)]
    index = torch.tensor([[(yi - yj + w - 1) * (2 * w - 1) + (xi - xj + w - 1) for yj, xj in coords]
                          for yi, xi in coords])
    return table[index].permute(2, 0, 1)


def naive_attention(attn: WindowAttention, xw: torch.Tensor, mask: torch.Tensor | None, w: int):
    """One window's tokens (N, C) -> (output (N, C), probs (heads, N, N)), explicit softmax."""
    N, C = xw.shape
    h = attn.num_heads
    d = C // h
    qkv = (xw @ attn.qkv.weight.T + attn.qkv.bias).view(N, 3, h, d)
    q, k, v = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1), qkv[:, 2].transpose(0, 1)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + naive_relative_bias(attn.relative_position_bias_table, w)
    if mask is not None:
        logits = logits + mask
    p = logits.softmax(-1)
    out = (p @ v).transpose(0, 1).reshape(N, C)
    return out @ attn.proj.weight.T + attn.proj.bias, p


def slice_region_labels(hp: int, wp: int, w: int, s: int) -> torch.Tensor:
    """Swin's labelling with the original slices (0:-w, -w:-s, -s:) on the padded grid."""
    lab = torch.zeros(hp, wp)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            lab[hs, ws] = cnt
            cnt += 1
    return lab


def naive_block(blk: SwinTransformerBlock, x: torch.Tensor, H: int, W: int,
                mask_padding: bool = False) -> tuple[torch.Tensor, list]:
    """Reference Swin block on (B, H*W, C): pad normalised features with zeros, roll, per-window naive
    attention (9-region mask on the padded grid), un-roll, crop, residuals. ``mask_padding`` also masks
    padded keys (NOT what EsViT does) to show the padding quirk matters."""
    B, L, C = x.shape
    w, s = blk.window_size, blk.shift_size
    hp, wp = math.ceil(H / w) * w, math.ceil(W / w) * w
    y = torch.zeros(B, hp, wp, C)
    y[:, :H, :W] = blk.norm1(x).view(B, H, W, C)
    valid = torch.zeros(hp, wp, dtype=torch.bool)
    valid[:H, :W] = True
    labels = slice_region_labels(hp, wp, w, s) if s else torch.zeros(hp, wp)
    y, valid = torch.roll(y, (-s, -s), (1, 2)), torch.roll(valid, (-s, -s), (0, 1))
    out = torch.zeros_like(y)
    probs = []
    for b in range(B):
        for r in range(0, hp, w):
            for c in range(0, wp, w):
                lab = labels[r:r + w, c:c + w].reshape(-1)
                mask = torch.where(lab[:, None] == lab[None, :], 0.0, -100.0) if s else None
                if mask_padding:
                    pad = ~valid[r:r + w, c:c + w].reshape(-1)
                    mask = (mask if mask is not None else torch.zeros(w * w, w * w)).masked_fill(pad[None, :], -1e4)
                o, p = naive_attention(blk.attn, y[b, r:r + w, c:c + w].reshape(-1, C), mask, w)
                out[b, r:r + w, c:c + w] = o.view(w, w, C)
                probs.append(p)
    out = torch.roll(out, (s, s), (1, 2))[:, :H, :W].reshape(B, L, C)
    x = x + out
    return x + blk.mlp(blk.norm2(x)), probs


def naive_forward(model: SwinTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-model reference: naive blocks, PatchMerging by explicit zero padding and slicing."""
    t = model.patch_embed.proj(x)
    B, C, H, W = t.shape
    t = model.patch_embed.norm(t.flatten(2).transpose(1, 2))
    for layer in model.layers:
        for blk in layer.blocks:
            t, _ = naive_block(blk, t, H, W)
        if layer.downsample is not None:
            h2, w2 = math.ceil(H / 2), math.ceil(W / 2)
            z = torch.zeros(B, 2 * h2, 2 * w2, C)
            z[:, :H, :W] = t.view(B, H, W, C)
            z = torch.cat([z[:, 0::2, 0::2], z[:, 1::2, 0::2], z[:, 0::2, 1::2], z[:, 1::2, 1::2]], -1)
            t = layer.downsample.reduction(layer.downsample.norm(z.reshape(B, h2 * w2, 4 * C)))
            H, W, C = h2, w2, 2 * C
    tokens = model.norm(t)
    return tokens.mean(1), tokens


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


# --- tricky numerics ---------------------------------------------------------------------------------
def test_relative_position_index_hand_values(swin_t):
    idx = swin_t.layers[0].blocks[0].attn.relative_position_index
    assert idx[0, 0] == 6 * 13 + 6 and idx[24, 24] == 84  # zero offset -> table centre
    assert idx[0, 48] == 0 and idx[48, 0] == 168  # (-6, -6) and (+6, +6)
    assert idx[1, 0] == 6 * 13 + 7 and idx[7, 0] == 7 * 13 + 6  # dx = +1 / dy = +1


def test_shifted_window_mask_hand_checked():
    # one 7x7 window holding a 3-px-shifted 7x7 (padded) grid, as stage 3 of a 96-px crop:
    # rows/cols split 4 + 3 -> regions of 16, 12, 12 and 9 tokens
    m = shifted_window_mask(7, 7, 7, 3)
    assert m.shape == (1, 49, 49) and m.dtype == torch.float32
    assert set(m.unique().tolist()) == {0.0, -100.0}
    assert int((m == 0).sum()) == 16 ** 2 + 12 ** 2 + 12 ** 2 + 9 ** 2
    assert torch.equal(m, m.transpose(1, 2))
    for hp, wp, w, s in ((28, 28, 7, 3), (14, 14, 7, 3), (56, 56, 7, 3), (28, 28, 14, 7), (14, 21, 7, 3)):
        lab = slice_region_labels(hp, wp, w, s)
        win = lab.view(hp // w, w, wp // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        ref = torch.where(win[:, None, :] == win[:, :, None], 0.0, -100.0)
        assert torch.equal(shifted_window_mask(hp, wp, w, s), ref), (hp, wp, w, s)
    m = shifted_window_mask(28, 28, 7, 3)  # 4x4 windows: only the last row / column mixes regions
    for i in range(16):
        assert bool((m[i] != 0).any()) == (i // 4 == 3 or i % 4 == 3), i


def test_window_attention_sdpa_matches_naive():
    torch.manual_seed(0)
    attn = randomize_(WindowAttention(12, 7, 3)).eval()
    x = torch.randn(4 * 2, 49, 12)  # 2 images x 4 windows
    mask = shifted_window_mask(14, 14, 7, 3)
    for m in (None, mask):
        out = attn(x, m)
        probs = attn.attention_probs(x, m)
        for i in range(x.shape[0]):
            o, p = naive_attention(attn, x[i], None if m is None else m[i % 4], 7)
            torch.testing.assert_close(out[i], o, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(probs[i], p, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(attn(x, mask), attn(x, None), atol=1e-3)  # the mask matters


@pytest.mark.parametrize("H,W,nominal,shift", [(10, 10, 14, 3), (3, 3, 14, 3), (14, 14, 14, 3), (5, 9, 14, 3),
                                               (12, 12, 14, 3), (10, 10, 14, 0), (3, 5, 14, 0), (6, 6, 7, 3)])
def test_block_matches_naive_padding_and_mask(H, W, nominal, shift):
    torch.manual_seed(0)
    blk = randomize_(SwinTransformerBlock(8, (nominal, nominal), 2, window_size=7, shift_size=shift,
                                          norm_layer=nn.LayerNorm)).eval()
    if nominal <= 7:
        assert (blk.window_size, blk.shift_size) == (nominal, 0)  # window rule: one window, no shift
    x = torch.randn(2, H * W, 8)
    with torch.no_grad():
        ref, probs = naive_block(blk, x, H, W)
        out = blk(x, (H, W))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(blk.attention_probs(x, (H, W)), torch.stack(probs), atol=1e-6, rtol=1e-4)
        masked, _ = naive_block(blk, x, H, W, mask_padding=True)
        # QUIRK: padded tokens are attended to, so masking them changes the result wherever they share a
        # window/region with real tokens: always without shift; with shift s a padding of exactly w - s
        # rows/cols becomes the isolated middle region after the roll (e.g. 10 -> 14, 3 -> 7 at w=7, s=3)
        w, s = blk.window_size, blk.shift_size
        shares = any(p > 0 and (s == 0 or p != w - s) for p in ((-H) % w, (-W) % w))
        assert ((out - masked).abs().max() > 1e-3) == shares


@pytest.mark.parametrize("size", [(96, 96), (64, 96), (40, 40)])
def test_model_matches_naive_reference(size):
    """Every stage's padding/shift/mask at local-crop geometry (96 px: 24->28, 12->14, 6->7, 3->7),
    odd PatchMerging inputs (40 px: 10, 5, 3, 2) and a non-square input, against ``naive_forward``."""
    torch.manual_seed(0)
    m = randomize_(SwinTransformer(img_size=224, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
                                   drop_path_rate=0.0)).eval()
    assert [b.shift_size for l in m.layers for b in l.blocks] == [0, 3, 0, 3, 0, 3, 0, 0]
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        pooled, tokens = m.forward_dense(x)
        ref_pooled, ref_tokens = naive_forward(m, x)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-4, rtol=1e-4)


def test_patch_merging_order_and_odd_padding():
    pm = PatchMerging((3, 3), dim=1)
    pm.norm = nn.Identity()
    x = torch.arange(9.0).view(1, 9, 1)  # 3x3 grid, row-major 0..8
    picks = {}
    for name, cols in (("x0x1", (0, 1)), ("x2x3", (2, 3))):
        with torch.no_grad():
            pm.reduction.weight.zero_()
            pm.reduction.weight[0, cols[0]] = 1
            pm.reduction.weight[1, cols[1]] = 1
        out, hw = pm(x, (3, 3))
        assert hw == (2, 2)
        picks[name] = out.view(2, 2, 2)
    # padded to 4x4 with zeros: x0 = [0::2, 0::2], x1 = [1::2, 0::2], x2 = [0::2, 1::2], x3 = [1::2, 1::2]
    assert picks["x0x1"][..., 0].tolist() == [[0, 2], [6, 8]]
    assert picks["x0x1"][..., 1].tolist() == [[3, 5], [0, 0]]
    assert picks["x2x3"][..., 0].tolist() == [[1, 0], [7, 0]]
    assert picks["x2x3"][..., 1].tolist() == [[4, 0], [0, 0]]


# --- model outputs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,tokens", [(224, 49), (96, 9), (64, 4), (32, 1), ((224, 96), 21), ((40, 40), 4)])
def test_region_token_counts(pico, size, tokens):
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        pooled, region = pico.forward_dense(torch.randn(1, 3, h, w))
    assert pooled.shape == (1, 192) and region.shape == (1, tokens, 192)
    torch.testing.assert_close(pooled, region.mean(1))


def test_pooled_feature_is_mean_of_final_normed_tokens(pico):
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        tokens, hw = pico.prepare_tokens(x)
        for layer in pico.layers:
            for blk in layer.blocks:
                tokens = blk(tokens, hw)
            if layer.downsample is not None:
                tokens, hw = layer.downsample(tokens, hw)
        region = F.layer_norm(tokens, (192,), pico.norm.weight, pico.norm.bias, eps=1e-6)
        torch.testing.assert_close(pico(x), region.mean(1))
        torch.testing.assert_close(pico.forward_dense(x)[1], region)
        assert hw == (3, 3)


def test_multicrop_forward_backward_finite_grads():
    torch.manual_seed(0)
    m = create_backbone("swin_pico").train()  # drop path 0.1 active
    crops = [torch.randn(2, 3, 224, 224), torch.randn(2, 3, 96, 96)]
    outs = [m.forward_dense(c) for c in crops]
    assert [o[1].shape[1] for o in outs] == [49, 9]
    loss = sum(p.square().mean() + t.square().mean() for p, t in outs)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_forward_return_n_last_blocks(pico, swin_t):
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        one = pico.forward_return_n_last_blocks(x, 1)
        torch.testing.assert_close(one, pico(x))  # last block, final norm, average
        three = pico.forward_return_n_last_blocks(x, 3, False, [1, 1, 2, 1])
        assert three.shape == (2, 96 + 96 + 192)
        # reference: stage-3 blocks un-normalised (before PatchMerging), stage-4 block normalised
        tokens, hw = pico.prepare_tokens(x)
        feats = []
        for i, layer in enumerate(pico.layers):
            for blk in layer.blocks:
                tokens = blk(tokens, hw)
                feats.append((i, tokens))
            if layer.downsample is not None:
                tokens, hw = layer.downsample(tokens, hw)
        ref = torch.cat([feats[2][1].mean(1), feats[3][1].mean(1), pico.norm(feats[4][1]).mean(1)], -1)
        torch.testing.assert_close(three, ref)
        torch.testing.assert_close(pico.forward_return_n_last_blocks(x, 3, depth=[1, 1, 2, 1]), three)
        assert swin_t.eval().forward_return_n_last_blocks(torch.randn(1, 3, 32, 32), 4).shape == (1, 2304)
    with pytest.raises(ValueError):
        pico.forward_return_n_last_blocks(x, 6)


def test_last_selfattention(pico):
    with torch.no_grad():
        for size in (224, 96):
            x = torch.randn(2, 3, size, size)
            a = pico.get_last_selfattention(x)
            assert a.shape == (2, 4, 49, 49)  # 7x7 (padded) grid, one window per image
            torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 49))
            all_a = pico.forward_selfattention(x, n=2)
            assert len(all_a) == 5 and torch.equal(all_a[-1], a)
        assert all_a[0].shape == (2 * 16, 1, 49, 49)  # 96 px stage 1: 24 -> 28 padded, 4x4 windows


def test_mask_cache_per_padded_size_and_autograd_safe(monkeypatch):
    import ssvit.models.swin_transformer as st
    torch.manual_seed(0)
    m = create_backbone("swin_pico", drop_path_rate=0.0)
    calls = []
    orig = st.shifted_window_mask
    monkeypatch.setattr(st, "shifted_window_mask", lambda *a, **k: calls.append(a[:2]) or orig(*a, **k))
    with torch.inference_mode():
        first = m(torch.randn(1, 3, 96, 96))
    n_shifted = sum(b.shift_size > 0 for l in m.layers for b in l.blocks)
    assert n_shifted == 1 and calls == [(7, 7)]  # stage 3 of a 96-px crop: 6 -> padded 7
    with torch.no_grad():
        m(torch.randn(2, 3, 224, 224))
    assert calls == [(7, 7), (14, 14)]
    x = torch.randn(1, 3, 96, 96, requires_grad=True)
    out = m(x)  # the cached mask was built under inference_mode; training must still work
    out.sum().backward()
    assert calls == [(7, 7), (14, 14)] and x.grad is not None
    assert list(m.layers[2].blocks[1]._mask_cache) == [(7, 7, "cpu"), (14, 14, "cpu")]
    torch.testing.assert_close(out.detach(), m(x.detach()))
    del first


def test_grad_checkpointing_same_numbers():
    torch.manual_seed(0)
    m = create_backbone("swin_pico", drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    out.square().sum().backward()
    g = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    out2 = m(x)
    out2.square().sum().backward()
    torch.testing.assert_close(out2, out)
    for a, p in zip(g, m.parameters()):
        torch.testing.assert_close(p.grad, a)
