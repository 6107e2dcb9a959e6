"""Vision Longformer (EsViT MsViT): layout, arch parser, sliding-chunk attention vs a naive dense
reference, EsViT's resolution quirks, outputs, factories and checkpoint loading."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from ssvit.models import DINOHead, create_backbone
from ssvit.models.vision_longformer import (VIL_2262_ARCH, VIL_PICO_ARCH, FullAttention, MsViT, PatchEmbed,
                                            SlidingChunkAttention, parse_arch, sliding_rpe_index, spec_to_kwargs,
                                            vil_2262, vil_pico, vil_small)

VIL_2262_PARAMS = 27_569_352  # spec backbones.md §5.1 (shared SHARE_W modules counted once)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """This file: many tiny ops, fastest on one thread (conftest.single_thread)."""


@pytest.fixture(scope="module")
def big():
    torch.manual_seed(0)
    return vil_2262().eval()


@pytest.fixture(scope="module")
def pico():
    torch.manual_seed(0)
    return vil_pico(drop_path_rate=0.0).eval()


# ------------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------------
def expected_vil_2262_layout() -> dict[str, tuple]:
    """Spec §8.6 listing, expanded: (dim, heads, blocks, global tokens, attention kind, input channels)."""
    out = {}
    stages = [(96, 3, 2, 1, "sc", 3), (192, 6, 2, 1, "sc", 96),
              (384, 12, 6, 1, "full", 192), (768, 24, 2, 0, "full", 384)]
    grids = [56, 28, 14, 7]
    patch = [4, 2, 2, 2]
    for s, ((d, h, n, g, kind, cin), grid, p) in enumerate(zip(stages, grids, patch), start=1):
        pre = f"layer{s}.0."
        if g:
            out[pre + "cls_token"] = (1, g, d)
        out[pre + "proj.weight"] = (d, cin, p, p)
        out[pre + "proj.bias"] = (d,)
        out[pre + "norm_embed.weight"] = out[pre + "norm_embed.bias"] = (d,)
        for j in range(n):
            a, m = f"layer{s}.{2 * j + 1}.", f"layer{s}.{2 * j + 2}."
            out[a + "norm.weight"] = out[a + "norm.bias"] = (d,)
            if kind == "sc":
                out[a + "attn.local_relative_position_bias_table"] = (27 * 27, h)
            else:
                out[a + "attn.local_relative_position_bias_table"] = ((2 * grid - 1) ** 2, h)
            if g:
                out[a + "attn.g2l_relative_position_bias"] = (2, h, g)
                out[a + "attn.g2g_relative_position_bias"] = (h, g, g)
            out[a + "attn.relative_position_index"] = (49, 441) if kind == "sc" else (grid * grid, grid * grid)
            if kind == "sc":
                for suffix in ("", "_global"):
                    out[a + f"attn.query{suffix}.weight"], out[a + f"attn.query{suffix}.bias"] = (d, d), (d,)
                    out[a + f"attn.kv{suffix}.weight"], out[a + f"attn.kv{suffix}.bias"] = (2 * d, d), (2 * d,)
                    out[a + f"attn.proj{suffix}.weight"], out[a + f"attn.proj{suffix}.bias"] = (d, d), (d,)
            else:
                out[a + "attn.qkv.weight"], out[a + "attn.qkv.bias"] = (3 * d, d), (3 * d,)
                out[a + "attn.proj.weight"], out[a + "attn.proj.bias"] = (d, d), (d,)
            out[m + "norm.weight"] = out[m + "norm.bias"] = (d,)
            out[m + "mlp.fc1.weight"], out[m + "mlp.fc1.bias"] = (4 * d, d), (4 * d,)
            out[m + "mlp.fc2.weight"], out[m + "mlp.fc2.bias"] = (d, 4 * d), (d,)
    out["norm.weight"] = out["norm.bias"] = (768,)
    return out


def test_vil_2262_param_count_and_state_dict(big):
    assert sum(p.numel() for p in big.parameters()) == VIL_2262_PARAMS
    sd = big.state_dict()
    expected = expected_vil_2262_layout()
    assert len(sd) == 241 and set(sd) == set(expected)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # spec §8.6 spot checks
    assert sd["layer1.1.attn.relative_position_index"].dtype == torch.int64
    assert sd["layer3.1.attn.relative_position_index"].shape == (196, 196)
    assert sd["layer4.1.attn.local_relative_position_bias_table"].shape == (169, 24)
    assert "layer4.0.cls_token" not in sd
    # SHARE_W: the *_global modules are the local ones, both names in the state dict
    a = big.layer1[1].attn
    assert a.query_global is a.query and a.kv_global is a.kv and a.proj_global is a.proj
    assert sd["layer2.3.attn.query_global.weight"].data_ptr() == sd["layer2.3.attn.query.weight"].data_ptr()
    assert big.embed_dim == big.num_features == 768
    assert all(m.eps == 1e-6 for m in big.modules() if isinstance(m, torch.nn.LayerNorm))
    assert not any(k.startswith("head") for k in sd) and isinstance(big.head, torch.nn.Identity)


def test_vil_small_layout_absolute_pos_embed():
    sd = vil_small().state_dict()
    assert sd["layer1.0.cls_pos_embed"].shape == (1, 1, 96)
    assert sd["layer1.0.x_pos_embed"].shape == (1, 56, 48) and sd["layer1.0.y_pos_embed"].shape == (1, 56, 48)
    assert sd["layer4.0.cls_pos_embed"].shape == (1, 0, 768) and sd["layer4.0.x_pos_embed"].shape == (1, 7, 384)
    assert not any("relative_position" in k for k in sd)
    assert sd["layer3.16.mlp.fc2.weight"].shape == (384, 1536)  # 8 blocks in stage 3


def test_relative_position_index_hand_values():
    idx = sliding_rpe_index(7)
    assert idx.shape == (49, 441)
    assert idx[0, 4 * 49] == 13 * 27 + 13  # query (0,0) vs own-chunk key (0,0): zero offset, table centre
    assert idx[0, 0] == (7 + 13) * 27 + (7 + 13)  # vs key (0,0) of the up-left chunk: offset (+7, +7)
    assert idx[48, 8 * 49 + 48] == (-7 + 13) * 27 + (-7 + 13)  # (6,6) vs (6,6) of the down-right chunk
    assert idx.min() >= 0 and idx.max() < 27 * 27


# ------------------------------------------------------------------------------------------------
# arch parser
# ------------------------------------------------------------------------------------------------
def test_parse_arch_defaults_and_values():
    cfgs = parse_arch(VIL_2262_ARCH)
    assert [c["n"] for c in cfgs] == [2, 2, 6, 2] and [c["g"] for c in cfgs] == [1, 1, 1, 0]
    assert [c["a"] for c in cfgs] == [0] * 4 and [c["s"] for c in cfgs] == [1, 1, 0, 0]
    cfgs = parse_arch("l1_l2_l3")
    assert cfgs[1] == {"l": 2, "h": 3, "d": 192, "n": 1, "s": 1, "g": 1, "p": 2, "f": 7, "a": 1, "r": 0}


@pytest.mark.parametrize("arch,msg", [
    ("", "non-empty"),
    ("l1,h3_l2_l3,x4", "unknown field"),
    ("l1,h3_l2,hh_l3", "malformed"),
    ("l1,h3_l2,h-1_l3", "malformed"),
    ("l1_l3_l2", "labelled l3"),
    ("l1_l2", "2 stages"),
    ("l1_l2_l3_l4_l5", "5 stages"),
    ("l1,h3,h4_l2_l3", "twice"),
    ("l1,h5,d96_l2_l3", "not divisible"),
    ("l1,h1,d15_l2_l3", "even dim"),
    ("l1,s2_l2_l3", "0 or 1"),
    ("l1,n0_l2_l3", ">= 1"),
])
def test_parse_arch_errors(arch, msg):
    with pytest.raises(ValueError, match=msg):
        parse_arch(arch)


def test_unsupported_options_raise():
    with pytest.raises(NotImplementedError, match="r1"):
        MsViT("l1,h1,d16,r1_l2,h1,d16_l3,h1,d16", img_size=32)
    with pytest.raises(NotImplementedError, match="with_se"):
        MsViT(VIL_PICO_ARCH, img_size=32, with_se="SE")
    with pytest.raises(NotImplementedError, match="performer"):
        MsViT(VIL_PICO_ARCH, img_size=32, attn_type="performer")


# ------------------------------------------------------------------------------------------------
# sliding-chunk attention against a naive dense reference
# ------------------------------------------------------------------------------------------------
def naive_sliding_attention(attn: SlidingChunkAttention, x, nx, ny, exact=0, mode=0, neighbour=None):
    """Full (N x N) scores with -inf outside each local query's allowed keys (global keys + the 9 /
    1 / 2 neighbour chunks, or the exact radius-W window), plus global queries over all tokens."""
    B, N, C = x.shape
    G, H, W = attn.nglo, attn.num_heads, attn.window
    M = C // H
    q = attn.query(x).view(B, N, H, M).transpose(1, 2)
    k, v = attn.kv(x).view(B, N, 2, H, M).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * attn.scale
    if G:
        qg = attn.query_global(x[:, :G]).view(B, G, H, M).transpose(1, 2)
        kg, vg = attn.kv_global(x).view(B, N, 2, H, M).permute(2, 0, 3, 1, 4)
        scores = torch.cat([qg @ kg.transpose(-2, -1) * attn.scale, scores[:, :, G:]], dim=2)
    r = torch.arange(nx).repeat_interleave(ny)
    c = torch.arange(ny).repeat(nx)
    dr, dc = r[:, None] - r[None, :], c[:, None] - c[None, :]  # query - key
    cr, cc = (r // W)[None, :] - (r // W)[:, None], (c // W)[None, :] - (c // W)[:, None]  # key chunk - query chunk
    if exact == 1:
        local_ok = (dr.abs() <= W) & (dc.abs() <= W)
    elif mode == -1:
        local_ok = (cr == 0) & (cc == 0)
    elif mode > 0:
        local_ok = ((cr == 0) & (cc == 0)) | ((cr == neighbour[0]) & (cc == neighbour[1]))
    else:
        local_ok = (cr.abs() <= 1) & (cc.abs() <= 1)
    allowed = torch.ones(N, N, dtype=torch.bool)
    allowed[G:, G:] = local_ok
    bias = torch.zeros(H, N, N)
    if attn.rpe:
        index = ((dr + 2 * W - 1) * (4 * W - 1) + dc + 2 * W - 1).clamp(0, (4 * W - 1) ** 2 - 1)
        bias[:, G:, G:] = attn.local_relative_position_bias_table[index].permute(2, 0, 1)
        if G:
            bias[:, G:, :G] = attn.g2l_relative_position_bias[1][:, None, :]
            bias[:, :G, G:] = attn.g2l_relative_position_bias[0][:, :, None]
            bias[:, :G, :G] = attn.g2g_relative_position_bias
    probs = (scores + bias).masked_fill(~allowed, float("-inf")).softmax(-1)
    out_loc = attn.proj((probs[:, :, G:] @ v).transpose(1, 2).reshape(B, -1, C))
    if not G:
        return out_loc, probs
    out_glo = attn.proj_global((probs[:, :, :G] @ vg).transpose(1, 2).reshape(B, G, C))
    return torch.cat([out_glo, out_loc], dim=1), probs


def _random_attention(seed, **kw):
    torch.manual_seed(seed)
    attn = SlidingChunkAttention(12, num_heads=2, qkv_bias=True, w=3, **kw)
    with torch.no_grad():  # make the bias tables large enough to matter
        for name, p in attn.named_parameters():
            if "relative_position" in name:
                p.normal_(0, 1.0)
    return attn.eval()


@pytest.mark.parametrize("nx,ny", [(7, 8), (2, 2), (6, 3)])  # padding both ways / smaller than W / exact
@pytest.mark.parametrize("nglo,rpe,sharew", [(2, True, True), (1, True, False), (0, True, True), (1, False, True)])
def test_sliding_chunk_matches_naive_dense(nx, ny, nglo, rpe, sharew):
    attn = _random_attention(nx * 10 + ny + nglo, nglo=nglo, rpe=rpe, sharew=sharew)
    x = torch.randn(2, nglo + nx * ny, 12)
    with torch.no_grad():
        ref_out, ref_probs = naive_sliding_attention(attn, x, nx, ny)
        out = attn(x, nx, ny)
        out_explicit, probs = attn(x, nx, ny, return_attn=True)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_explicit, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, nglo + nx * ny))
    # a local query never sees a key two chunks away (W=3)
    if nx == 7:
        assert probs[:, :, nglo + 0, nglo + 6 * ny].abs().max() == 0  # (0,0) vs (6,0)
        assert probs[:, :, nglo + 0, nglo + 5 * ny].abs().min() > 0  # (0,0) vs (5,0): neighbour chunk


@pytest.mark.parametrize("nx,ny", [(7, 8), (2, 2)])
def test_sliding_chunk_exact_window_and_own_chunk_modes(nx, ny):
    attn = _random_attention(1, nglo=1, rpe=True, exact=1)
    x = torch.randn(1, 1 + nx * ny, 12)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, nx, ny), naive_sliding_attention(attn, x, nx, ny, exact=1)[0],
                                   atol=1e-5, rtol=1e-5)
        attn = _random_attention(2, nglo=1, rpe=True, mode=-1)
        torch.testing.assert_close(attn(x, nx, ny), naive_sliding_attention(attn, x, nx, ny, mode=-1)[0],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("draw,neighbour", [(2, (-1, 0)), (5, (0, 1)), (8, (1, 1))])
def test_random_neighbour_mode(monkeypatch, draw, neighbour):
    """mode > 0: in training one random.randrange(1, 9) draw per call picks the extra chunk."""
    attn = _random_attention(3, nglo=1, rpe=True, mode=1).train()
    calls = []

    def fake_randrange(a, b):
        calls.append((a, b))
        return draw

    monkeypatch.setattr(random, "randrange", fake_randrange)
    x = torch.randn(1, 1 + 7 * 8, 12)
    with torch.no_grad():
        out = attn(x, 7, 8)
        ref = naive_sliding_attention(attn, x, 7, 8, mode=draw, neighbour=neighbour)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert calls == [(1, 9)]
    attn.eval()  # eval: the full 9-chunk neighbourhood, no draw
    with torch.no_grad():
        torch.testing.assert_close(attn(x, 7, 8), naive_sliding_attention(attn, x, 7, 8)[0], atol=1e-5, rtol=1e-5)
    assert calls == [(1, 9)]


def test_cyclic_mode_keeps_wrapped_padding_visible():
    """sw_exact=-1 (QUIRK): the up-neighbour of chunk row 0 is the (padded) last chunk row, unmasked."""
    attn = _random_attention(4, nglo=0, rpe=False, exact=-1)
    x = torch.randn(1, 4 * 4, 12)  # 4x4 map, W=3 -> 2x2 chunks, last row/col padded by 2
    with torch.no_grad():
        _, probs = attn(x, 4, 4, return_attn=True)
    # query (0,0) sees (via wrap-around) the real tokens of chunk row 1, e.g. (3, 0)
    assert probs[0, :, 0, 3 * 4].min() > 0
    # ... and the zero-vector padded keys take probability mass: the visible real keys sum to < 1
    assert probs[0, :, 0].sum(-1).max() < 1 - 1e-3


# ------------------------------------------------------------------------------------------------
# full attention / pos-embed resolution quirks
# ------------------------------------------------------------------------------------------------
def test_full_attention_bias_resized_as_image():
    torch.manual_seed(0)
    attn = FullAttention(8, num_heads=2, qkv_bias=True, rpe=True, wx=4, wy=4, nglo=1)
    nominal = attn.local_relative_position_bias_table[attn.relative_position_index.view(-1)].view(16, 16, 2)
    b = attn.relative_bias(9)  # 3x3 map: (16x16) bias resized with scale 9/16 (QUIRK)
    ref = F.interpolate(nominal.permute(2, 0, 1)[None], scale_factor=9 / 16, mode="bicubic")[0]
    assert b.shape == (2, 10, 10)
    torch.testing.assert_close(b[:, 1:, 1:], ref)
    torch.testing.assert_close(b[:, 0, 0], attn.g2g_relative_position_bias[:, 0, 0])
    torch.testing.assert_close(b[:, 0, 1:], attn.g2l_relative_position_bias[0].expand(2, 9))
    torch.testing.assert_close(b[:, 1:, 0], attn.g2l_relative_position_bias[1].expand(2, 9))
    torch.testing.assert_close(attn.relative_bias(16)[:, 1:, 1:], nominal.permute(2, 0, 1))
    # 196 * (16/196) rounds down to 15 in F.interpolate (the original crashes); we produce 16x16
    big = FullAttention(8, num_heads=2, rpe=True, wx=14, wy=14, nglo=0)
    assert big.relative_bias(16).shape == (2, 16, 16)


def test_absolute_pos_embed_counts_global_tokens():
    torch.manual_seed(0)
    pe = PatchEmbed(4, 8, 8, 3, 16, nglo=1, norm_embed=False, ape=True)
    grid = torch.cat([pe.x_pos_embed.unsqueeze(2).expand(-1, -1, 8, -1),
                      pe.y_pos_embed.unsqueeze(1).expand(-1, 8, -1, -1)], dim=-1)  # (1, 8, 8, 16)
    assert torch.equal(grid[0, 3, 5], torch.cat([pe.x_pos_embed[0, 3], pe.y_pos_embed[0, 5]]))
    with torch.no_grad():
        at_nominal = pe.pos_embed_2d(8, 8)
        ref = F.interpolate(grid.permute(0, 3, 1, 2), scale_factor=math.sqrt(65 / 64), mode="bicubic")
        torch.testing.assert_close(at_nominal, ref.permute(0, 2, 3, 1).reshape(1, 64, 16))
        assert (at_nominal - grid.reshape(1, 64, 16)).abs().max() > 1e-4  # resampled even at 8x8 (QUIRK)
        small = pe.pos_embed_2d(3, 3)
        ref = F.interpolate(grid.permute(0, 3, 1, 2), scale_factor=math.sqrt(10 / 64), mode="bicubic")
        torch.testing.assert_close(small, ref.permute(0, 2, 3, 1).reshape(1, 9, 16))
    pe0 = PatchEmbed(4, 8, 8, 3, 16, nglo=0, norm_embed=False, ape=True)
    grid0 = torch.cat([pe0.x_pos_embed.unsqueeze(2).expand(-1, -1, 8, -1),
                       pe0.y_pos_embed.unsqueeze(1).expand(-1, 8, -1, -1)], dim=-1)
    assert torch.equal(pe0.pos_embed_2d(8, 8), grid0.reshape(1, 64, 16))  # no global token: unchanged


def test_full_attention_stage_makes_later_stages_full():
    m = MsViT("l1,h1,d16,p4,a0_l2,h1,d16,s0,a0_l3,h1,d16,s1,a0", img_size=64)
    assert isinstance(m.layer1[1].attn, SlidingChunkAttention)
    assert isinstance(m.layer2[1].attn, FullAttention)
    assert isinstance(m.layer3[1].attn, FullAttention)  # QUIRK: s1 after an s0 stage is full attention


# ------------------------------------------------------------------------------------------------
# model outputs
# ------------------------------------------------------------------------------------------------
def test_pico_multicrop_forward_backward():
    torch.manual_seed(0)
    m = vil_pico().train()
    g, l_ = torch.randn(4, 3, 224, 224), torch.randn(4, 3, 96, 96)  # 2 global + 2 local crops of 2 images
    cls_g, reg_g = m.forward_dense(g)
    cls_l, reg_l = m.forward_dense(l_)
    assert cls_g.shape == (4, 64) and reg_g.shape == (4, 49, 64)
    assert cls_l.shape == (4, 64) and reg_l.shape == (4, 9, 64)
    loss = cls_g.square().mean() + cls_l.square().mean() + reg_g.mean() + reg_l.abs().mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("g2g_relative_position_bias"):
            # the stage's global outputs of its last block are dropped before the next stage (as EsViT)
            assert p.grad.abs().max() == 0, name
        else:
            assert p.grad.abs().max() > 0, name


def test_small_inputs_padding_and_tiny_grids(pico):
    with torch.no_grad():
        for size in (32, 64, 96, 100):  # 32 px: 8x8 (padded to 14x14) then 4x4 / 2x2 / 1x1 maps
            cls, reg = pico.forward_dense(torch.randn(2, 3, size, size))
            side = size // 32
            assert cls.shape == (2, 64) and reg.shape == (2, side * side, 64)
            assert torch.isfinite(cls).all() and torch.isfinite(reg).all()


def test_outputs_pooling_and_n_last_blocks(pico):
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        tokens = pico.forward_tokens(x)
        cls, reg = pico.forward_dense(x)
        assert tokens.shape == (2, 9, 64)  # stage 4 has no global token: region = all tokens
        torch.testing.assert_close(cls, tokens.mean(1))
        torch.testing.assert_close(pico(x), cls)
        feats = pico.forward_return_n_last_blocks(x, n=2, return_patch_avgpool=False, depths=[1, 1, 1, 1])
        assert feats.shape == (2, 48 + 64)  # stage-3 global token (not normed) + stage-4 normed mean
        torch.testing.assert_close(feats[:, 48:], cls)
        torch.testing.assert_close(pico.forward_return_n_last_blocks(x, 2), feats)  # default: own depths
        with pytest.raises(ValueError):
            pico.forward_return_n_last_blocks(x, n=5)


def test_vil_2262_outputs_at_96px(big):
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        cls, reg = big.forward_dense(x)
        feats = big.forward_return_n_last_blocks(x, 4, False, [2, 2, 6, 2])
    assert cls.shape == (1, 768) and reg.shape == (1, 9, 768)
    assert feats.shape == (1, 2304)  # 2 x 384 (stage-3 global token) + 2 x 768 (stage-4 mean)
    torch.testing.assert_close(feats[:, -768:], cls)


def test_global_token_view_feature_and_avg_pool():
    arch = "l1,h1,d16,p4,a0_l2,h1,d16,a0_l3,h2,d32,g2,s0,a0"  # last stage keeps 2 global tokens
    torch.manual_seed(0)
    m = MsViT(arch, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = m.forward_tokens(x)
        cls, reg = m.forward_dense(x)
        assert t.shape == (2, 2 + 16, 32)
        torch.testing.assert_close(cls, t[:, 0])
        torch.testing.assert_close(reg, t[:, 1:])  # EsViT keeps the other global token in the regions
        m.avg_pool = True
        cls, reg = m.forward_dense(x)
        torch.testing.assert_close(cls, t.mean(1))
        assert reg.shape == t.shape


def test_get_last_selfattention(pico):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        attn = pico.get_last_selfattention(x)
    assert attn.shape == (2, 4, 49, 49)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 49))
    # sliding-chunk last block: probabilities scattered into the dense (N x N) map
    m = MsViT("l1,h1,d16,p4,a0_l2,h1,d16,a0_l3,h2,d32,g1,f3,a0", img_size=64).eval()
    with torch.no_grad():
        a = m.get_last_selfattention(torch.randn(1, 3, 64, 64))
    assert a.shape == (1, 2, 17, 17)
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 2, 17))


def test_get_all_selfattention(pico):
    x = torch.randn(2, 3, 64, 64)  # stage grids 16, 8, 4, 2 with 1, 1, 1, 0 global tokens
    with torch.no_grad():
        attns = pico.get_all_selfattention(x)
        last = pico.get_last_selfattention(x)
    assert len(attns) == sum(pico.depths) == 4
    assert [tuple(a.shape) for a in attns] == [(2, 1, 257, 257), (2, 2, 65, 65), (2, 2, 17, 17), (2, 4, 4, 4)]
    assert torch.equal(attns[-1], last)
    for a in attns:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # stage 1 is sliding-chunk (7x7 chunks + 8 neighbours): a top-left local query sees no far tokens
    assert attns[0][:, :, 1, 1 + 15 * 16 + 15].eq(0).all() and (attns[0][:, :, 1, 0] > 0).all()
    with torch.no_grad():  # the forward is unchanged by collecting the maps
        torch.testing.assert_close(pico._forward_tokens(x, attns=[])[0], pico._forward_tokens(x)[0], rtol=0, atol=0)


def test_mode_switch_and_reset(monkeypatch):
    torch.manual_seed(0)
    m = vil_pico(mode=1, drop_path_rate=0.0).train()
    draws = []
    monkeypatch.setattr(random, "randrange", lambda a, b: draws.append((a, b)) or 3)
    m(torch.randn(1, 3, 64, 64))
    assert draws == [(1, 9), (1, 9)]  # one draw per sliding-chunk attention call (stages 1, 2)
    m.reset_vil_mode(0)
    m(torch.randn(1, 3, 64, 64))
    assert len(draws) == 2
    assert all(a.mode == 0 for a in m.modules() if isinstance(a, SlidingChunkAttention))


# ------------------------------------------------------------------------------------------------
# factories, config mapping, checkpoints
# ------------------------------------------------------------------------------------------------
def test_factories_and_registry():
    import ssvit.models.vision_longformer  # noqa: F401  (registers the factories)
    m = create_backbone("vil_pico", patch_size=16, img_size=96, drop_path_rate=0.0, mode=1, unknown=3)
    assert isinstance(m, MsViT) and m.layer1[1].attn.mode == 1
    assert m.layer1[0].norm_embed is not None and m.layer1[1].attn.query_global is m.layer1[1].attn.query
    assert m.layer2[0].nx == 96 // 8  # nominal grid follows img_size
    from ssvit.models.registry import _ALIASES
    assert _ALIASES["vil_1281"] == "vil_small"  # EsViT --arch name of the vil_small/base.yaml default
    assert create_backbone("vil", arch=VIL_PICO_ARCH, img_size=64).num_features == 64
    with pytest.raises(ValueError, match="fixed arch"):
        vil_2262(arch=VIL_PICO_ARCH)
    m = vil_pico()  # drop-path rates linspace(0, 0.1, 4) per stage, shared by an attention / MLP pair
    assert isinstance(m.layer1[1].drop_path, torch.nn.Identity) and isinstance(m.layer1[2].drop_path, torch.nn.Identity)
    assert m.layer4[1].drop_path.drop_prob == m.layer4[2].drop_path.drop_prob == pytest.approx(0.1)
    assert m.layer2[2].drop_path.drop_prob == pytest.approx(0.1 / 3)


def test_spec_to_kwargs_from_esvit_yaml():
    spec = {"AVG_POOL": False, "DROP": 0.0, "DROP_PATH": 0.1, "NORM_EMBED": True,
            "MSVIT": {"ARCH": VIL_PICO_ARCH, "LN_EPS": "1e-06", "SHARE_W": True, "ATTN_TYPE": "longformerhand",
                      "SHARE_KV": True, "ONLY_GLOBAL": False, "SW_EXACT": 0, "MODE": 1, "VIL_MODE_SWITCH": 0.75,
                      "POOL_METHOD": "None", "WITH_SE": "None", "SE_MLP_RATIO": 0.0625, "SE_MLP_BALANCE": False}}
    kw = spec_to_kwargs(spec)
    assert kw == {"drop_rate": 0.0, "drop_path_rate": 0.1, "norm_embed": True, "avg_pool": False,
                  "arch": VIL_PICO_ARCH, "sharew": True, "attn_type": "longformerhand", "share_kv": True,
                  "only_glo": False, "sw_exact": 0, "ln_eps": 1e-6, "mode": 1, "pool_method": None,
                  "with_se": None, "se_mlp_ratio": 0.0625, "se_mlp_balance": False}
    m = MsViT(img_size=64, **kw)
    assert m.layer1[1].attn.mode == 1 and m.ln_eps == 1e-6


def test_esvit_checkpoint_layout_loads(pico):
    """EsViT teacher/student entries: backbone keys + head.* + head_dense.* (optionally 'module.')."""
    torch.manual_seed(1)
    src = vil_pico()
    src.head = DINOHead(64, 32, bottleneck_dim=16, hidden_dim=32)
    src.head_dense = DINOHead(64, 32, bottleneck_dim=16, hidden_dim=32)
    ckpt = {"module." + k: v for k, v in src.state_dict().items()}
    assert sum(k.startswith("module.head.") for k in ckpt) == 8
    assert sum(k.startswith("module.head_dense.") for k in ckpt) == 8
    sd = {k.replace("module.", ""): v for k, v in ckpt.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dense."))}
    dst = vil_pico(drop_path_rate=0.0).eval()
    dst.load_state_dict(sd, strict=True)
    src.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_full_size_checkpoint_key_count(big):
    """Spec §8.6: 257 entries with the two DINO heads (241 backbone + 2 x 8)."""
    head_keys = [f"{h}.{k}" for h in ("head", "head_dense") for k in
                 ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
                  "last_layer.weight_g", "last_layer.weight_v")]
    sd = dict(big.state_dict())
    sd.update({k: torch.zeros(1) for k in head_keys})
    assert len(sd) == 257
    backbone = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dense."))}
    result = big.load_state_dict(backbone, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
