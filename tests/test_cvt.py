"""EsViT cvt_v4 backbone: layout, window/padding/mask numerics against naive references, outputs."""
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from ssvit.models.cvt import (CvT, LayerNormFp32, WindowAttention, shifted_window_mask, spec_to_kwargs)
from ssvit.models.heads import DINOHead
from ssvit.models.registry import create_backbone

S1_DIMS, S1_DEPTHS, S1_HEADS = (64, 192, 384, 768), (2, 2, 6, 2), (1, 3, 6, 12)

S1_YAML = """
MODEL:
  NAME: cvt_v4_transformer
  SPEC:
    INIT: 'trunc_norm'
    NUM_STAGES: 4
    REL_POS_EMBED: False
    SHIFT: [False, False, False, False]
    DROP_PATH_RATE: 0.1
    PATCH_SIZE: [7, 3, 3, 3]
    PATCH_STRIDE: [4, 2, 2, 2]
    PATCH_PADDING: [2, 1, 1, 1]
    WINDOW_SIZE: [7, 7, 7, 7]
    DIM_EMBED: [64, 192, 384, 768]
    NUM_HEADS: [1, 3, 6, 12]
    DEPTH: [2, 2, 6, 2]
    MLP_RATIO: [4.0, 4.0, 4.0, 4.0]
    QKV_BIAS: [True, True, True, True]
    KERNEL_QKV: [3, 3, 3, 3]
    PADDING_QKV: [1, 1, 1, 1]
"""


def esvit_cvt_layout(dims, depths, patch=(7, 3, 3, 3), mlp_ratio=4):
    """(key, shape) of the original EsViT cvt_v4 backbone in state_dict order (spec backbones.md §8.7)."""
    out, cin = [], 3
    for i, (d, depth) in enumerate(zip(dims, depths)):
        p = f"stage{i}."
        out += [(p + "0.proj.weight", (d, cin, patch[i], patch[i])), (p + "0.proj.bias", (d,)),
                (p + "0.norm.weight", (d,)), (p + "0.norm.bias", (d,))]
        for j in range(depth):
            b = f"{p}1.layers.{j}."
            out += [(b + "0.norm.weight", (d,)), (b + "0.norm.bias", (d,)),
                    (b + "0.fn.qkv.dw.weight", (d, 1, 3, 3)),
                    (b + "0.fn.qkv.bn.weight", (d,)), (b + "0.fn.qkv.bn.bias", (d,)),
                    (b + "0.fn.qkv.bn.running_mean", (d,)), (b + "0.fn.qkv.bn.running_var", (d,)),
                    (b + "0.fn.qkv.bn.num_batches_tracked", ()),
                    (b + "0.fn.qkv.pw.weight", (3 * d, d, 1, 1)), (b + "0.fn.qkv.pw.bias", (3 * d,)),
                    (b + "0.fn.proj_out.weight", (d, d, 1, 1)), (b + "0.fn.proj_out.bias", (d,)),
                    (b + "1.norm.weight", (d,)), (b + "1.norm.bias", (d,)),
                    (b + "1.fn.net.0.weight", (mlp_ratio * d, d, 1, 1)), (b + "1.fn.net.0.bias", (mlp_ratio * d,)),
                    (b + "1.fn.net.2.weight", (d, mlp_ratio * d, 1, 1)), (b + "1.fn.net.2.bias", (d,))]
        cin = d
    return out + [("norm.weight", (dims[-1],)), ("norm.bias", (dims[-1],))]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """This file: many tiny ops, fastest on one thread (conftest.single_thread)."""


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_backbone("cvt_tiny").eval()


def randomise_(model, seed=0):
    """Non-trivial biases, norm affines and BN statistics (the init makes them 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1:
                t.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model


# --- layout -----------------------------------------------------------------------------------

def test_cvt_tiny_params_keys_shapes(tiny):
    assert sum(p.numel() for p in tiny.parameters()) == 29_303_616  # spec figure for s1
    sd = tiny.state_dict()
    expected = esvit_cvt_layout(S1_DIMS, S1_DEPTHS)
    assert len(sd) == 234 == len(expected)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    assert sd["stage0.1.layers.0.0.fn.qkv.bn.num_batches_tracked"].dtype == torch.int64
    assert tiny.embed_dim == tiny.num_features == 768
    assert not any(k.startswith(("head", "head_dense")) for k in sd)
    assert isinstance(tiny.head, torch.nn.Identity)
    assert tiny.no_weight_decay() == set() and tiny.no_weight_decay_keywords() == set()


def test_cvt_small_and_w14_factories():
    with torch.device("meta"):  # layout only: skip initialising 50 M parameters
        small = create_backbone("cvt_small", patch_size=16, img_size=224, use_dense_prediction=True, foo=1)
        w14 = create_backbone("cvt_tiny_w14", drop_path_rate=0.0)
    assert sum(p.numel() for p in small.parameters()) == 22_620_160  # measured on the original s3
    assert [(k, tuple(v.shape)) for k, v in small.state_dict().items()] == esvit_cvt_layout(
        (64, 128, 256, 512), (2, 2, 10, 4))
    assert small.num_heads == (2, 4, 8, 16)
    blocks = [m for m in small.modules() if type(m).__name__ == "DropPath"]
    assert blocks[0].drop_prob == 0.0 and blocks[-1].drop_prob == pytest.approx(0.2)  # linspace over 18 blocks
    assert blocks[1].drop_prob == pytest.approx(0.2 / 17)
    pico = create_backbone("cvt_pico", window_size=(14, 14, 14, 7), rel_pos_embed=True)
    tables = [m.rel_pos_bias_table.shape for m in pico.modules() if isinstance(m, WindowAttention)]
    assert tables == [(27 * 27, 1), (27 * 27, 2), (27 * 27, 2), (13 * 13, 4)]
    assert w14.window_sizes == (14, 14, 14, 7)
    assert [m.drop_prob for m in w14.modules() if type(m).__name__ == "DropPath"] == [0.0] * 12


def test_rel_pos_and_res_stem_keys():
    m = create_backbone("cvt_pico", rel_pos_embed=True, res_stem=True)
    sd = m.state_dict()
    assert sd["stage1.1.layers.0.0.fn.rel_pos_bias_table"].shape == (13 * 13, 2)
    idx = sd["stage1.1.layers.0.0.fn.rel_pos_idx"]
    assert idx.shape == (49, 49) and idx.dtype == torch.int64
    # position (0,0) vs (6,6): offset (-6,-6) -> (0 * 13 + 0); (6,6) vs (0,0) -> 12 * 13 + 12; diagonal -> centre
    assert idx[0, 48] == 0 and idx[48, 0] == 168 and (idx.diagonal() == 84).all()
    stem = [k for k in sd if k.startswith("stage0.0.")]
    assert stem == [f"stage0.0.stem.{i}.{n}" for i in (0, 1, 3, 4, 6, 7)
                    for n in (("weight",) if i % 3 == 0 else
                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))]
    assert sd["stage0.0.stem.0.weight"].shape == (16, 3, 3, 3)
    out = m.eval()(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 64)


def test_init_trunc_normal_on_convs():
    torch.manual_seed(0)
    m = create_backbone("cvt_pico")
    pw = m.stage3[1].layers[0][0].fn.qkv.pw
    assert 0.018 < pw.weight.std().item() < 0.022  # PyTorch's default conv init would be ~0.07 here
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            assert (p == 0).all(), name
        elif p.ndim == 1:
            assert (p == 1).all(), name  # LayerNorm / BatchNorm weights


# --- numerics of the parts --------------------------------------------------------------------

def test_layernorm_fp32_and_quickgelu():
    ln = LayerNormFp32(8, eps=1e-5)
    x = torch.randn(4, 8).bfloat16()
    y = ln(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, F.layer_norm(x.float(), (8,), eps=1e-5).bfloat16())
    act = create_backbone("cvt_pico").stage0[1].layers[0][1].fn.net[1]
    t = torch.linspace(-4, 4, 17)
    torch.testing.assert_close(act(t), t * torch.sigmoid(1.702 * t))


def naive_window_attention(attn: WindowAttention, x, mask=None):
    """Loop-per-window reference: zero-pad right/bottom to multiples of w = min(ws, H, W), qkv on the
    padded map, softmax(q k^T * C^-0.5 + bias) per window and head (pads NOT masked), crop, proj."""
    B, C, H, W = x.shape
    ws, heads = attn.window_size, attn.num_heads
    w = min(ws, H, W)
    Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
    xp = x.new_zeros(B, C, Hp, Wp)
    xp[:, :, :H, :W] = x
    qkv = attn.qkv(xp)
    q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
    d, N = C // heads, w * w
    pos = [(i, j) for i in range(w) for j in range(w)]
    out = torch.zeros(B, C, Hp, Wp)
    for b in range(B):
        for r in range(Hp // w):
            for c in range(Wp // w):
                rows, cols = slice(r * w, (r + 1) * w), slice(c * w, (c + 1) * w)
                for h in range(heads):
                    ch = slice(h * d, (h + 1) * d)
                    qw, kw, vw = (t[b, ch, rows, cols].reshape(d, N).T for t in (q, k, v))
                    s = qw @ kw.T * C ** -0.5
                    if attn.rel_pos_embed:
                        table = attn.rel_pos_bias_table[:, h]
                        s = s + torch.stack([torch.stack([table[(y1 - y2 + w - 1) * (2 * w - 1) + (x1 - x2 + w - 1)]
                                                          for (y2, x2) in pos]) for (y1, x1) in pos])
                    if mask is not None:
                        s = s + mask[r * (Wp // w) + c]
                    out[b, ch, rows, cols] = (s.softmax(-1) @ vw).T.reshape(d, w, w)
    return attn.proj_out(out[:, :, :H, :W])


@pytest.mark.parametrize("hw,ws", [((9, 12), 4), ((5, 7), 7), ((24, 24), 7), ((6, 6), 7), ((8, 8), 4)])
def test_window_attention_matches_naive_reference(hw, ws):
    torch.manual_seed(0)
    attn = randomise_(WindowAttention(8, 2, window_size=ws)).eval()
    x = torch.randn(2, 8, *hw)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), naive_window_attention(attn, x), atol=2e-5, rtol=1e-4)
    # padded positions take part in attention (their keys are BN shift + bias, not masked out)
    H, W = hw
    w = min(ws, H, W)
    probs = attn.attention_probs(x)
    assert probs.shape == (2 * math.ceil(H / w) * math.ceil(W / w), 2, w * w, w * w)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    if H % w or W % w:
        last = probs[-1].reshape(2, w * w, w, w)  # bottom-right window of the second image
        pad_mass = last[..., H % w or w:, :].sum() + last[..., :, W % w or w:].sum()
        assert pad_mass > 0.05


def test_window_attention_train_mode_bn_sees_padding():
    torch.manual_seed(0)
    attn = randomise_(WindowAttention(8, 1, window_size=7)).train()
    ref = randomise_(WindowAttention(8, 1, window_size=7)).train()
    x = torch.randn(2, 8, 10, 10)  # padded to 14x14: batch statistics include the zero rows/cols
    torch.testing.assert_close(attn(x), naive_window_attention(ref, x), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(attn.qkv.bn.running_mean, ref.qkv.bn.running_mean)


def test_rel_pos_bias_and_shift_mask_match_naive_reference():
    torch.manual_seed(0)
    attn = randomise_(WindowAttention(8, 2, window_size=4, rel_pos_embed=True)).eval()
    with torch.no_grad():
        attn.rel_pos_bias_table.normal_()  # large enough to matter
    x = torch.randn(2, 8, 8, 12)
    mask = shifted_window_mask(8, 12, 4)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), naive_window_attention(attn, x, mask), atol=2e-5, rtol=1e-4)
        assert (attn(x, mask) - attn(x)).abs().max() > 1e-3
        plain = WindowAttention(8, 2, window_size=4).eval()
        plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "rel_pos" not in k})
        assert (attn(x) - plain(x)).abs().max() > 1e-3


def test_shifted_window_mask_by_hand():
    m = shifted_window_mask(8, 8, 4)  # 2x2 windows; regions cut at rows/cols 4 and 6
    assert m.shape == (4, 16, 16)
    assert (m[0] == 0).all()  # top-left window lies in one region
    # top-right window: columns 4-5 vs 6-7 are different regions, rows all the same
    assert m[1, 0, 1] == 0 and m[1, 0, 2] == -100 and m[1, 0, 4] == 0 and m[1, 2, 7] == 0
    # bottom-right window: 4 regions (rows 4-5 / 6-7 x cols 4-5 / 6-7)
    assert m[3, 0, 5] == 0 and m[3, 0, 15] == -100 and m[3, 0, 8] == -100 and m[3, 10, 15] == 0
    regions = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]] * 4 + [[3, 3, 3, 3, 4, 4, 5, 5]] * 2
                           + [[6, 6, 6, 6, 7, 7, 8, 8]] * 2)
    windows = regions.view(2, 4, 2, 4).permute(0, 2, 1, 3).reshape(4, 16)
    expected = torch.where(windows[:, :, None] != windows[:, None, :], -100.0, 0.0)
    torch.testing.assert_close(m, expected)
    assert shifted_window_mask(10, 10, 4).shape == (9, 16, 16)  # padded with window_size, not w


def test_shift_does_not_roll_and_small_maps_raise():
    torch.manual_seed(0)
    m = randomise_(create_backbone("cvt_pico", shift=True)).eval()
    plain = create_backbone("cvt_pico").eval()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        # the shift stage = the plain blocks with the window_size mask added, features never rolled
        y = plain.stage0[0](x)
        mask = shifted_window_mask(56, 56, 7)
        ref = plain.stage0[1].layers[0](y, mask)
        torch.testing.assert_close(m.stage0(x), ref)
        assert (plain.stage0(x) - ref).abs().max() > 1e-4
        assert (m(x) - plain(x)).abs().max() > 1e-4  # mask changes the last window row/column
        with pytest.raises(ValueError, match="window_size"):
            m(torch.randn(1, 3, 96, 96))  # 24x24 map: the original crops wrongly / crashes
        with pytest.raises(ValueError, match="window_size"):
            m(torch.randn(1, 3, 220, 220))  # 55x55 map needs padding
    rpe = create_backbone("cvt_pico", rel_pos_embed=True).eval()
    with torch.no_grad():
        assert rpe(torch.randn(1, 3, 224, 224)).shape == (1, 64)
        with pytest.raises(ValueError, match="rel_pos_embed"):
            rpe(torch.randn(1, 3, 96, 96))  # stage 3: 6x6 map < window 7


def test_sdpa_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = randomise_(WindowAttention(16, 4, window_size=7)).eval()
    x = torch.randn(3, 16, 14, 21)
    with torch.no_grad():
        _, _, v, (B, C, H, W, Hp, Wp, w) = attn._split(x)
        o = attn.attention_probs(x) @ v  # explicit softmax
        o = o.view(B, Hp // w, Wp // w, 4, w, w, 4).permute(0, 3, 6, 1, 4, 2, 5).reshape(B, C, Hp, Wp)
        torch.testing.assert_close(attn(x), attn.proj_out(o), atol=1e-5, rtol=1e-5)


# --- the whole model --------------------------------------------------------------------------

def test_pico_multicrop_forward_backward():
    torch.manual_seed(0)
    m = create_backbone("cvt_pico").train()
    g, l = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 96, 96)
    pg, tg = m.forward_dense(g)
    pl, tl = m.forward_dense(l)
    assert pg.shape == pl.shape == (2, 64) and tg.shape == (2, 49, 64) and tl.shape == (2, 9, 64)
    (pg.square().sum() + pl.square().sum() + tg.sin().sum() + tl.sin().sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("size,grid", [(224, 7), (96, 3), (64, 2), (32, 1), (100, 4)])
def test_region_token_counts_and_pooling(size, grid):
    torch.manual_seed(0)
    m = randomise_(create_backbone("cvt_pico")).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        pooled, tokens = m.forward_dense(x)
        assert tokens.shape == (2, grid * grid, 64)
        torch.testing.assert_close(pooled, tokens.mean(1))
        torch.testing.assert_close(m(x), pooled)
        maps = m.forward_maps(x)
        torch.testing.assert_close(tokens, F.layer_norm(maps.flatten(2).transpose(1, 2), (64,), m.norm.weight,
                                                        m.norm.bias, eps=1e-5))


def test_forward_return_n_last_blocks():
    torch.manual_seed(0)
    m = randomise_(create_backbone("cvt_pico", depths=(1, 2, 1, 2))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = m.forward_return_n_last_blocks(x, 4, False, [1, 2, 1, 2])
        assert out.shape == (2, 32 + 48 + 64 + 64)
        # manual: stage outputs, raw mean-pooled before the last stage, normed in it
        y = m.stage0(x.contiguous(memory_format=torch.channels_last))
        y, f1 = m.stage1[1](m.stage1[0](y), return_features=True)
        y, f2 = m.stage2[1](m.stage2[0](y), return_features=True)
        y, f3 = m.stage3[1](m.stage3[0](y), return_features=True)
        normed = [m.norm(f.permute(0, 2, 3, 1)).mean((1, 2)) for f in f3]
        ref = torch.cat([f1[1].mean((2, 3)), f2[0].mean((2, 3)), *normed], dim=-1)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(m.forward_return_n_last_blocks(x, 1), m(x))  # depths optional
        with pytest.raises(ValueError):
            m.forward_return_n_last_blocks(x, 7)
        with pytest.raises(ValueError):
            m.forward_return_n_last_blocks(x, 2, False, [2, 2, 6, 2])


def test_cvt_tiny_n_last_blocks_width(tiny):
    with torch.no_grad():
        out = tiny.forward_return_n_last_blocks(torch.randn(1, 3, 32, 32), 4, False, list(S1_DEPTHS))
    assert out.shape == (1, 2304)  # 2 x 384 + 2 x 768, as EsViT's linear eval for s1


def test_get_last_selfattention():
    torch.manual_seed(0)
    m = randomise_(create_backbone("cvt_pico")).eval()
    x = torch.randn(2, 3, 224, 224)
    a = m.get_last_selfattention(x)
    assert a.shape == (2, 4, 49, 49)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 49))
    assert m.get_last_selfattention(torch.randn(2, 3, 96, 96)).shape == (2, 4, 9, 9)
    # consistent with the forward pass: probs of the last block on its normed input
    with torch.no_grad():
        y = m.stage2(m.stage1(m.stage0(x.contiguous(memory_format=torch.channels_last))))
        y = m.stage3[0](y)
        blk = m.stage3[1].layers[0][0]
        normed = blk.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        q, k, _, _ = blk.fn._split(normed)
        torch.testing.assert_close(a, ((q @ k.transpose(-1, -2)) * 64 ** -0.5).softmax(-1))


def test_get_all_selfattention_windows_by_hand():
    torch.manual_seed(0)
    m = randomise_(create_backbone("cvt_pico")).eval()
    x = torch.randn(2, 3, 112, 112)  # stage maps 28, 14, 7, 4 -> 16, 4, 1, 1 windows per image
    attns = m.get_all_selfattention(x)
    assert len(attns) == sum(m.depths) == 4
    assert [tuple(a.shape) for a in attns] == [(32, 1, 49, 49), (8, 2, 49, 49), (2, 2, 49, 49), (2, 4, 16, 16)]
    assert torch.equal(attns[-1], m.get_last_selfattention(x))
    for a in attns:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # block 1 (stage 1) by hand from its input: image 1, window (row 1, col 0), head 1
    with torch.no_grad():
        y = m.stage1[0](m.stage0(x.contiguous(memory_format=torch.channels_last)))
        blk = m.stage1[1].layers[0][0]
        qkv = blk.fn.qkv(blk.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))  # (2, 96, 14, 14)
        q = qkv[1, 16:32, 7:14, 0:7].reshape(16, 49).T  # head 1 = channels 16..31 of q
        k = qkv[1, 32 + 16:32 + 32, 7:14, 0:7].reshape(16, 49).T
        ref = (q @ k.T * 32 ** -0.5).softmax(-1)  # scale: full embed dim 32
    torch.testing.assert_close(attns[1][4 + 2 * 1 + 0, 1], ref, atol=1e-6, rtol=1e-4)
    assert (attns[1][4 + 2, 1] - attns[1][4 + 1, 1]).abs().max() > 1e-3


def test_esvit_checkpoint_layout_loads(tmp_path):
    torch.manual_seed(0)
    src = randomise_(create_backbone("cvt_pico")).eval()
    src.head, src.head_dense = DINOHead(64, 32, bottleneck_dim=16, hidden_dim=32), DINOHead(64, 32, bottleneck_dim=16,
                                                                                         hidden_dim=32)
    teacher = {f"module.{k}": v for k, v in src.state_dict().items()}  # BN -> DDP-wrapped teacher
    assert any(k.startswith("module.head_dense.") for k in teacher)
    torch.save({"teacher": teacher, "epoch": 3}, tmp_path / "checkpoint.pth")
    sd = torch.load(tmp_path / "checkpoint.pth", map_location="cpu")["teacher"]
    sd = {k.replace("module.", ""): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dense."))}
    dst = create_backbone("cvt_pico").eval()
    dst.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_spec_to_kwargs(tiny):
    spec = yaml.safe_load(S1_YAML)["MODEL"]["SPEC"]
    kwargs = spec_to_kwargs(spec)
    assert kwargs["embed_dims"] == list(S1_DIMS) and kwargs["window_sizes"] == [7] * 4
    assert kwargs["drop_path_rate"] == 0.1 and kwargs["init"] == "trunc_norm"
    rpe = spec_to_kwargs(dict(spec, REL_POS_EMBED=True, RES_STEM=True, SHIFT=[True] * 4,
                              WINDOW_SIZE=[14, 14, 14, 7]))
    assert rpe["rel_pos_embed"] and rpe["res_stem"] and rpe["shift"] == [True] * 4
    with torch.device("meta"):
        m = CvT(**kwargs)
        m_rpe = create_backbone("cvt_tiny", **rpe)
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [(k, v.shape) for k, v in tiny.state_dict().items()]
    assert m_rpe.window_sizes == (14, 14, 14, 7) and m_rpe.shift == (True,) * 4 and m_rpe.res_stem
    assert sum(p.numel() for p in m_rpe.parameters()) == 29_405_988  # measured on the original res_stem/s1_rpe_w14
    with pytest.raises(ValueError, match="unknown"):
        spec_to_kwargs(dict(spec, DIM_EMBEDS=[1]))
    with pytest.raises(ValueError, match="NUM_STAGES"):
        spec_to_kwargs(dict(spec, NUM_STAGES=3))
