"""EsViT's windowed Convolutional vision Transformer (``cvt_v4_transformer``, arch ``cvt_tiny`` / ``cvt_small``).

Li et al., "Efficient Self-supervised Vision Transformers for Representation Learning" (ICLR 2022),
microsoft/esvit ``models/cvt_v4_transformer.py``. This is *not* the published CvT (Wu et al., 2021):
there is no class token and attention is local, inside non-overlapping w x w windows of the feature
map; q/k/v come from one depthwise-separable convolution (depthwise 3x3 -> BatchNorm -> pointwise).
Every stage is ``ConvEmbed`` (strided conv + LayerNorm) followed by pre-norm blocks on (B, C, H, W)
maps: ``x = x + drop_path(attn(LN(x)))``; ``x = x + drop_path(ffn(LN(x)))`` (1x1 convs, QuickGELU).
The view-level feature is the average of the final-normalised last-stage tokens.

State-dict keys, shapes and buffers equal the original's (``stage{i}.0.*`` embedding,
``stage{i}.1.layers.{j}.{0,1}.{norm,fn}.*`` blocks, ``norm.*``; ``...fn.rel_pos_bias_table`` and the
buffer ``...fn.rel_pos_idx`` with ``rel_pos_embed``; ``stage0.0.stem.*`` with ``res_stem``). The model
has BatchNorm, so EsViT wraps the *teacher* in DDP too and its checkpoint ``teacher`` entry carries a
``module.`` prefix (unlike Swin/ViL); strip it and drop ``head.*`` / ``head_dense.*`` to load a
released teacher here with ``strict=True``.

Numerics reproduced from the original (QUIRKs marked where they look like bugs):

* attention scale ``dim_out ** -0.5`` with the *full* embedding dim, not the head dim;
* window size ``w = min(window_size, H, W)``; the normalised map is zero-padded right/bottom to a
  multiple of ``w`` *before* the qkv convolution, and padded positions take part in attention
  unmasked (their keys/values are BatchNorm shift + pointwise bias, not zero);
* QUIRK ``shift``: builds Swin's shifted-window mask (from the configured ``window_size``) and adds it
  to the scores, but never rolls the features;
* QUIRK ``rel_pos_embed`` / ``shift``: the bias table / mask are sized for ``window_size`` and only fit
  when ``w == window_size``; the original crashes with a shape mismatch on smaller maps (96-px crops,
  stage 3/4 for W7, stage 2-4 for W14). Here this raises a ``ValueError`` naming the map size.
* QUIRK ``shift`` with padding: the original reuses the name ``H`` for the head count when adding the
  mask and crops the padded output to ``num_heads`` rows -- a shape error, or (one head) a silent
  broadcast of the first output row. ``shift`` therefore needs every stage map to be a multiple of
  ``window_size`` (224 px: 56/28/14/7); otherwise this raises a ``ValueError`` (deviation only for the
  silently-wrong one-head case).
* LayerNorm computes in fp32 and casts back; QuickGELU; trunc-normal(0.02) init of Linear *and*
  Conv2d weights.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, QuickGELU, trunc_normal_

from .backbone import Backbone, Features
from .registry import register_backbone

__all__ = ["CvT", "spec_to_kwargs", "cvt_tiny", "cvt_small", "cvt_tiny_w14", "cvt_small_w14", "cvt_pico"]


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm over the last dim computed in fp32, result cast back to the input dtype (eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def norm_channels(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a last-dim norm over the channels of a map (B, C, H, W) -> (B, C, H, W)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _per_stage(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries, expected one per stage ({n})")
        return list(value)
    return [value] * n


class ConvEmbed(nn.Module):
    """Strided conv + channel LayerNorm: (B, C_in, H, W) -> (B, C, H', W'). Keys ``proj.*``, ``norm.*``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = LayerNormFp32(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_channels(self.norm, self.proj(x))


class ResStem(nn.Module):
    """``RES_STEM`` stage-0 embedding: 3 x (conv3x3 no bias -> BN -> ReLU), strides 2, 1, 2 (total 4).

    Keys ``stem.{0,1,3,4,6,7}.*``; no LayerNorm after it (as the original).
    """

    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i, stride in enumerate((2, 1, 2)):
            layers += [nn.Conv2d(in_chans if i == 0 else channels, channels, 3, stride, 1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


class DepthwiseQKV(nn.Module):
    """Depthwise conv (no bias) -> BatchNorm -> pointwise conv: (B, C, H, W) -> (B, 3C, H, W)."""

    def __init__(self, dim: int, kernel_size: int, padding: int, bias: bool):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=padding, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.pw = nn.Conv2d(dim, 3 * dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.bn(self.dw(x)))


def relative_position_index(window_size: int) -> torch.Tensor:
    """(w*w, w*w) index into a ((2w-1)^2, heads) table for the offset between two window positions."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def shifted_window_mask(H: int, W: int, window_size: int, device=None) -> torch.Tensor:
    """Swin's shifted-window mask as EsViT's cvt_v4 builds it: (nW, ws*ws, ws*ws) of 0 / -100.

    The map is padded up to multiples of ``window_size`` and split into 3 x 3 regions by the slices
    ``[0, -ws)``, ``[-ws, -ws//2)``, ``[-ws//2, end)`` per axis; scores between different regions get
    -100. QUIRK: the features are never rolled, so this only cuts the last window row/column in parts.
    """
    ws, shift = window_size, window_size // 2
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    regions = torch.zeros(Hp, Wp, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, hs in enumerate(cuts):
        for j, wsl in enumerate(cuts):
            regions[hs, wsl] = 3 * i + j
    windows = regions.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head attention inside non-overlapping w x w windows of a (normalised) map.

    (B, C, H, W) -> (B, C, H, W). ``w = min(window_size, H, W)``; see the module docstring for the
    padding rule and quirks. Heads split the channel axis head-major; scale is ``dim ** -0.5``.
    Keys: ``qkv.{dw,bn,pw}.*``, ``proj_out.*`` (+ ``rel_pos_bias_table``, buffer ``rel_pos_idx``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kernel_size: int = 3,
                 padding: int = 1, window_size: int = 7, rel_pos_embed: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = dim ** -0.5  # full embedding dim, as the original
        self.qkv = DepthwiseQKV(dim, kernel_size, padding, qkv_bias)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.rel_pos_embed = rel_pos_embed
        if rel_pos_embed:
            self.register_buffer("rel_pos_idx", relative_position_index(window_size))
            self.rel_pos_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
            trunc_normal_(self.rel_pos_bias_table, std=0.02)

    def _bias(self, geometry: tuple, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Additive score bias broadcastable to (B*nW, heads, N, N), or None."""
        B, _, H, W, Hp, Wp, w = geometry
        if w != self.window_size and (self.rel_pos_embed or mask is not None):
            raise ValueError(
                f"{H}x{W} map is smaller than window_size={self.window_size}: "
                f"{'rel_pos_embed' if self.rel_pos_embed else 'shift'} needs full windows (the original "
                "cvt_v4_transformer fails here with a shape mismatch); use larger inputs or disable it")
        if mask is not None and (Hp, Wp) != (H, W):
            # The original overwrites H with the head count when it adds the mask and then crops the
            # padded output to num_heads rows: a shape error, or a silent broadcast when num_heads == 1.
            raise ValueError(
                f"shift needs map sizes that are multiples of window_size={self.window_size}, got {H}x{W} "
                "(the original cvt_v4_transformer crops the padded output wrongly here)")
        bias = None
        if self.rel_pos_embed:
            N = w * w
            bias = self.rel_pos_bias_table[self.rel_pos_idx.view(-1)].view(N, N, -1).permute(2, 0, 1)
        if mask is not None:
            m = mask.repeat(B, 1, 1).unsqueeze(1)  # windows are ordered (b, row, col), like the mask's
            bias = m if bias is None else bias + m
        return bias

    def _split(self, x: torch.Tensor):
        """Pad, qkv, window partition -> q, k, v (B*nW, heads, w*w, d) and the geometry."""
        B, C, H, W = x.shape
        w = min(self.window_size, H, W)
        pad_b, pad_r = (-H) % w, (-W) % w
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        h, d = self.num_heads, C // self.num_heads
        qkv = self.qkv(x)
        qkv = qkv.view(B, 3, h, d, Hp // w, w, Wp // w, w).permute(1, 0, 4, 6, 2, 5, 7, 3)
        q, k, v = qkv.reshape(3, -1, h, w * w, d).unbind(0)
        return q, k, v, (B, C, H, W, Hp, Wp, w)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v, geometry = self._split(x)
        B, C, H, W, Hp, Wp, w = geometry
        bias = self._bias(geometry, mask)
        if bias is not None:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        # un-window to a channels-last map (B, Hp, Wp, C), channel index = head * d + i as the split
        out = out.view(B, Hp // w, Wp // w, self.num_heads, w, w, -1).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(B, Hp, Wp, C)[:, :H, :W].permute(0, 3, 1, 2)
        return self.proj_out(out.contiguous(memory_format=torch.channels_last))

    def attention_probs(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Post-softmax window attention (B*nW, heads, w*w, w*w); windows ordered (b, row, col)."""
        q, k, _, geometry = self._split(x)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        bias = self._bias(geometry, mask)
        if bias is not None:
            scores = scores + bias
        return scores.softmax(dim=-1)


class FeedForward(nn.Module):
    """1x1 conv (C -> rC) -> QuickGELU -> 1x1 conv (rC -> C). Keys ``net.0.*``, ``net.2.*``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.net = nn.Sequential(nn.Conv2d(dim, hidden, 1), QuickGELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PreNorm(nn.Module):
    """``fn(LN_channels(x), *args)`` on maps (B, C, H, W). Keys ``norm.*``, ``fn.*``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = LayerNormFp32(dim, eps=1e-5)
        self.fn = fn

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return self.fn(norm_channels(self.norm, x), *args)


class CvTBlock(nn.ModuleList):
    """``[PreNorm(attention), PreNorm(feed-forward), DropPath]`` (a list, for the original's keys
    ``layers.{j}.0.*`` / ``layers.{j}.1.*``); one DropPath module serves both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, kernel_qkv: int,
                 padding_qkv: int, window_size: int, rel_pos_embed: bool, drop_path: float):
        super().__init__([
            PreNorm(dim, WindowAttention(dim, num_heads, qkv_bias, kernel_qkv, padding_qkv, window_size,
                                         rel_pos_embed)),
            PreNorm(dim, FeedForward(dim, mlp_ratio)),
            DropPath(drop_path),
        ])

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        attn, ffn, drop_path = self
        x = x + drop_path(attn(x, mask))
        return x + drop_path(ffn(x))


class CvTTransformer(nn.Module):
    """The blocks of one stage on a map (B, C, H, W). Key prefix ``layers.{j}``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 drop_path: Sequence[float], kernel_qkv: int = 3, padding_qkv: int = 1,
                 window_size: int = 7, shift: bool = False, rel_pos_embed: bool = False):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.layers = nn.ModuleList([
            CvTBlock(dim, num_heads, mlp_ratio, qkv_bias, kernel_qkv, padding_qkv, window_size, rel_pos_embed,
                     drop_path[j])
            for j in range(depth)])

    def attn_mask(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.shift:
            return None
        return shifted_window_mask(x.shape[-2], x.shape[-1], self.window_size, x.device)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """-> output map, or (output map, [output of every block]) with ``return_features``."""
        mask = self.attn_mask(x)
        feats = []
        for blk in self.layers:
            x = blk(x, mask)
            feats.append(x)
        return (x, feats) if return_features else x


class CvTStage(nn.Sequential):
    """``(embedding, transformer)``; keys ``0.*`` and ``1.*`` as the original's ``nn.Sequential``."""


def _init_weights(m: nn.Module, init: str = "trunc_norm") -> None:
    if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif (init == "trunc_norm" and isinstance(m, (nn.Linear, nn.Conv2d))) or (
            init == "xavier" and isinstance(m, nn.Linear)):  # the original's 'xavier' leaves convs at the default
        if init == "trunc_norm":
            trunc_normal_(m.weight, std=0.02)
        else:
            nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class CvT(Backbone):
    """EsViT ``cvt_v4`` backbone without classifier.

    ``forward(x)`` (B, 3, H, W) -> pooled view-level feature (B, C_last) (EsViT's ``forward_features``).
    ``forward_dense(x)`` -> (pooled (B, C), final-normalised last-stage tokens (B, h*w, C)).
    ``forward_return_n_last_blocks(x, n, return_patch_avgpool, depths)`` -> (B, sum of C over the last
    n blocks), each block output average-pooled, last-stage ones normalised first.
    ``get_last_selfattention(x)`` -> last block's window attention (B*nW, heads, w*w, w*w);
    ``get_all_selfattention(x)`` -> every block's, in order.
    Any input size the original accepts (e.g. 224 -> 7x7 = 49 tokens, 96 -> 3x3 = 9 tokens); with
    ``rel_pos_embed`` every stage map must be at least ``window_size``, with ``shift`` a multiple of it
    (the original fails there too; here a ``ValueError`` says so).

    Per-stage arguments take a scalar (all stages) or a sequence (one per stage); ``img_size`` is
    accepted for interface uniformity and unused.
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 192, 384, 768), depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (1, 3, 6, 12), window_sizes: int | Sequence[int] = 7,
                 patch_sizes: Sequence[int] = (7, 3, 3, 3), patch_strides: Sequence[int] = (4, 2, 2, 2),
                 patch_paddings: Sequence[int] = (2, 1, 1, 1), mlp_ratios: float | Sequence[float] = 4.0,
                 qkv_bias: bool | Sequence[bool] = True, kernel_qkv: int | Sequence[int] = 3,
                 padding_qkv: int | Sequence[int] = 1, shift: bool | Sequence[bool] = False,
                 rel_pos_embed: bool = False, res_stem: bool = False, drop_path_rate: float = 0.1,
                 init: str = "trunc_norm", num_classes: int = 0):
        super().__init__()
        if num_classes:
            raise ValueError("ssvit's CvT has no classifier (num_classes must be 0); heads are attached outside")
        if init not in ("trunc_norm", "xavier"):
            raise ValueError(f"unknown init '{init}' (trunc_norm or xavier)")
        n = len(embed_dims)
        per = {name: _per_stage(v, n, name) for name, v in dict(
            depths=depths, num_heads=num_heads, window_sizes=window_sizes, patch_sizes=patch_sizes,
            patch_strides=patch_strides, patch_paddings=patch_paddings, mlp_ratios=mlp_ratios,
            qkv_bias=qkv_bias, kernel_qkv=kernel_qkv, padding_qkv=padding_qkv, shift=shift).items()}
        self.num_stages = n
        self.embed_dims = tuple(int(d) for d in embed_dims)
        self.depths = tuple(int(d) for d in per["depths"])
        self.num_heads = tuple(int(h) for h in per["num_heads"])
        self.window_sizes = tuple(int(w) for w in per["window_sizes"])
        self.shift = tuple(bool(s) for s in per["shift"])
        self.rel_pos_embed = bool(rel_pos_embed)
        self.res_stem = bool(res_stem)
        self.embed_dim = self.num_features = self.embed_dims[-1]

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths), device="cpu").tolist()
        chans, start = in_chans, 0
        for i in range(n):
            dim = self.embed_dims[i]
            if i == 0 and res_stem:
                embed = ResStem(in_chans, dim)
            else:
                embed = ConvEmbed(chans, dim, per["patch_sizes"][i], per["patch_strides"][i],
                                  per["patch_paddings"][i])
            blocks = CvTTransformer(dim, self.depths[i], self.num_heads[i], per["mlp_ratios"][i], per["qkv_bias"][i],
                                    dpr[start:start + self.depths[i]], per["kernel_qkv"][i], per["padding_qkv"][i],
                                    self.window_sizes[i], self.shift[i], self.rel_pos_embed)
            self.add_module(f"stage{i}", CvTStage(embed, blocks))
            chans, start = dim, start + self.depths[i]
        self.norm = LayerNormFp32(chans, eps=1e-5)
        self.head = nn.Identity()  # num_classes=0; EsViT attaches head / head_dense as attributes
        self.apply(lambda m: _init_weights(m, init))

    @property
    def stages(self) -> list[CvTStage]:
        return [getattr(self, f"stage{i}") for i in range(self.num_stages)]

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        # channels-last maps throughout: much faster depthwise / stem convolutions on CPU (oneDNN),
        # and the channel LayerNorms read contiguous (..., C) rows; numerics are unchanged.
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        return x.contiguous(memory_format=torch.channels_last)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> last-stage map before the final norm (B, C, h, w)."""
        x = self._prepare(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_features(self, x: torch.Tensor) -> Features:
        """``Features(pooled (B, C), region tokens (B, h*w, C))``, both after the final norm."""
        tokens = self.norm(self.forward_maps(x).flatten(2).transpose(1, 2))
        return Features(tokens.mean(dim=1), tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).cls

    def forward_return_n_last_blocks(self, x: torch.Tensor, n: int = 1, return_patch_avgpool: bool = False,
                                     depths: Sequence[int] = (), depth: Sequence[int] = ()) -> torch.Tensor:
        """Average-pooled outputs of the last ``n`` blocks concatenated (oldest first): (B, sum C_i).

        Last-stage outputs go through the final norm first (as the original; earlier stages are
        pooled raw). ``depths`` (the original's ``depth``, EsViT passes the YAML ``DEPTH``) may be
        left empty; if given it must equal the model's. ``return_patch_avgpool`` is unused, as in
        the original.
        """
        given = list(depths) or list(depth)
        if given and [int(d) for d in given] != list(self.depths):
            raise ValueError(f"depths {given} do not match the model's {list(self.depths)}")
        total = sum(self.depths)
        if not 1 <= n <= total:
            raise ValueError(f"n must be in [1, {total}], got {n}")
        first = total - n  # global index of the first block returned
        x, out, seen = self._prepare(x), [], 0
        for i, stage in enumerate(self.stages):
            x, feats = stage[1](stage[0](x), return_features=True)
            for j, f in enumerate(feats):
                if seen + j >= first:
                    if i == self.num_stages - 1:
                        f = norm_channels(self.norm, f)
                    out.append(f.mean(dim=(2, 3)))
            seen += len(feats)
        return torch.cat(out, dim=-1)

    @torch.no_grad()
    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Post-softmax attention of the last block: (B*nW, heads, w*w, w*w) (224 px: (B, heads, 49, 49))."""
        stages, x = self.stages, self._prepare(x)
        for stage in stages[:-1]:
            x = stage(x)
        x = stages[-1][0](x)
        transformer = stages[-1][1]
        mask = transformer.attn_mask(x)
        for blk in transformer.layers[:-1]:
            x = blk(x, mask)
        attn = transformer.layers[-1][0]
        return attn.fn.attention_probs(norm_channels(attn.norm, x), mask)

    @torch.no_grad()
    def get_all_selfattention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Post-softmax attention of every block, in order: each (B*nW, heads, w*w, w*w), windows
        ordered (b, row, col) (224 px: stage maps 56/28/14/7 -> 64/16/4/1 windows per image)."""
        x, out = self._prepare(x), []
        for stage in self.stages:
            x = stage[0](x)
            transformer = stage[1]
            mask = transformer.attn_mask(x)
            for blk in transformer.layers:
                attn = blk[0]
                out.append(attn.fn.attention_probs(norm_channels(attn.norm, x), mask))
                x = blk(x, mask)
        return out

    def no_weight_decay(self) -> set:
        return set()  # the original defines none (EsViT decays all >1-D params incl. rel_pos_bias_table)

    def no_weight_decay_keywords(self) -> set:
        return set()


# --- configuration --------------------------------------------------------------------------

_SPEC_KEYS = {
    "DIM_EMBED": "embed_dims", "DEPTH": "depths", "NUM_HEADS": "num_heads", "WINDOW_SIZE": "window_sizes",
    "PATCH_SIZE": "patch_sizes", "PATCH_STRIDE": "patch_strides", "PATCH_PADDING": "patch_paddings",
    "MLP_RATIO": "mlp_ratios", "QKV_BIAS": "qkv_bias", "KERNEL_QKV": "kernel_qkv", "PADDING_QKV": "padding_qkv",
    "SHIFT": "shift", "REL_POS_EMBED": "rel_pos_embed", "RES_STEM": "res_stem",
    "DROP_PATH_RATE": "drop_path_rate", "INIT": "init",
}


def spec_to_kwargs(spec: dict) -> dict:
    """EsViT YAML ``MODEL.SPEC`` (upper-case keys, e.g. experiments/imagenet/cvt_v4/s1.yaml) -> ``CvT`` kwargs.

    ``NUM_STAGES`` is checked against the per-stage lists; ``REL_POS_EMBED`` / ``RES_STEM`` default to
    False when absent. Unknown keys raise ``ValueError``. The teacher's zero drop-path
    (``is_teacher`` in the original) is the caller's business.
    """
    spec = dict(spec)
    num_stages = spec.pop("NUM_STAGES", None)
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown cvt_v4 MODEL.SPEC keys: {unknown}")
    kwargs = {_SPEC_KEYS[k]: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.items()}
    if "init" in kwargs:
        kwargs["init"] = str(kwargs["init"]).lower()
    if num_stages is not None:
        for k, v in kwargs.items():
            if isinstance(v, list) and len(v) != int(num_stages):
                raise ValueError(f"MODEL.SPEC {k}: {len(v)} entries but NUM_STAGES={num_stages}")
    return kwargs


_CVT_ARGS = set(inspect.signature(CvT.__init__).parameters) - {"self"}


def _cvt(config: dict, window_size, drop_path_rate: float, rel_pos_embed: bool, shift, res_stem: bool,
         kwargs: dict) -> CvT:
    args = dict(config, window_sizes=window_size)
    args.update((k, v) for k, v in kwargs.items() if k in _CVT_ARGS)  # swallow the rest (patch_size, ...)
    return CvT(drop_path_rate=drop_path_rate, rel_pos_embed=rel_pos_embed, shift=shift, res_stem=res_stem, **args)


_S1 = dict(embed_dims=(64, 192, 384, 768), num_heads=(1, 3, 6, 12), depths=(2, 2, 6, 2))
_S3 = dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 2, 10, 4))
_W14 = (14, 14, 14, 7)


@register_backbone
def cvt_tiny(drop_path_rate: float = 0.1, window_size=7, rel_pos_embed: bool = False, shift=False,
             res_stem: bool = False, **kwargs) -> CvT:
    """EsViT s1 (``cvt_tiny``): dims 64/192/384/768, heads 1/3/6/12, depths 2/2/6/2, window 7; 29.3 M params."""
    return _cvt(_S1, window_size, drop_path_rate, rel_pos_embed, shift, res_stem, kwargs)


@register_backbone
def cvt_small(drop_path_rate: float = 0.2, window_size=7, rel_pos_embed: bool = False, shift=False,
              res_stem: bool = False, **kwargs) -> CvT:
    """EsViT s3 (``cvt_small``): dims 64/128/256/512, heads 2/4/8/16, depths 2/2/10/4, window 7."""
    return _cvt(_S3, window_size, drop_path_rate, rel_pos_embed, shift, res_stem, kwargs)


@register_backbone
def cvt_tiny_w14(drop_path_rate: float = 0.1, window_size=_W14, rel_pos_embed: bool = False, shift=False,
                 res_stem: bool = False, **kwargs) -> CvT:
    """EsViT win_size/s1 (and res_stem/s1_w14 with ``res_stem=True``): s1 with windows 14/14/14/7."""
    return _cvt(_S1, window_size, drop_path_rate, rel_pos_embed, shift, res_stem, kwargs)


@register_backbone
def cvt_small_w14(drop_path_rate: float = 0.2, window_size=_W14, rel_pos_embed: bool = False, shift=False,
                  res_stem: bool = False, **kwargs) -> CvT:
    """EsViT win_size/s3 (and res_stem/s3_w14 with ``res_stem=True``): s3 with windows 14/14/14/7."""
    return _cvt(_S3, window_size, drop_path_rate, rel_pos_embed, shift, res_stem, kwargs)


@register_backbone
def cvt_pico(drop_path_rate: float = 0.1, window_size=7, rel_pos_embed: bool = False, shift=False,
             res_stem: bool = False, **kwargs) -> CvT:
    """CPU test size: dims 16/32/48/64, heads 1/2/2/4, one block per stage, window 7."""
    return _cvt(dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 1)),
                window_size, drop_path_rate, rel_pos_embed, shift, res_stem, kwargs)
