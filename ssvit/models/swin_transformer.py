"""Swin Transformer backbone as used by EsViT (microsoft/esvit ``models/swin_transformer.py``).

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" (ICCV 2021),
in the variant of Li et al., "Efficient Self-supervised Vision Transformers for Representation
Learning" (EsViT, ICLR 2022): four stages of (shifted-)window attention blocks with relative position
bias, ``PatchMerging`` at the *end* of stages 1-3, final LayerNorm and average pooling, and any input
size (feature maps are zero-padded to window multiples, so 224-px global and 96-px local crops run
through the same model).

State-dict keys, shapes and buffers equal the original's (``patch_embed.{proj,norm}.*``,
``layers.{i}.blocks.{j}.{norm1,attn.relative_position_bias_table,attn.relative_position_index,
attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``layers.{i}.downsample.{reduction,norm}.*``, ``norm.*``;
``absolute_pos_embed`` with ``ape``), so an EsViT ``teacher``/``student`` entry loads strictly after
stripping ``module.`` and dropping the ``head.*`` / ``head_dense.*`` keys. The module owns no head:
``head`` is an ``nn.Identity`` that EsViT replaces by its DINO head (``head_dense`` likewise is
attached from outside), which keeps the original key layout.

Numerics follow the original; where it differs from timm's Swin (stage layout, ``PatchMerging`` order,
padding of odd sizes, window rule from the nominal resolution) this module follows EsViT.
Intentional differences from the original code, none of which changes the numbers:

* the shifted-window mask is cached per (padded size, device); the original rebuilds it on every call
  because its cache lookup tests ``H is dict.keys()`` (always ``False``) -- performance only;
* attention runs through ``F.scaled_dot_product_attention`` with bias + mask as an additive float mask;
  the explicit softmax is computed only when attention maps are requested;
* the token grid (H, W) is carried explicitly instead of ``H = W = sqrt(L)``, so non-square inputs work;
  square inputs give the same numbers.

EsViT history: before the fix prompted by microsoft/esvit issue #9 (Sep 2021) the original built the
shifted-window mask for the *nominal* resolution (``create_attn_mask(self.H, self.W)``), so crops of
another size got masks of the wrong window grid, depending on the crop's position in the batch (or a
crash when the window count did not divide the batch). This module implements the fixed behaviour
(mask for the actual padded grid), as the spec requires; at the nominal size both agree.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models.swin_transformer import get_relative_position_index, window_partition, window_reverse

from .backbone import Backbone, Features
from .registry import register_backbone

__all__ = ["SwinTransformer", "WindowAttention", "SwinTransformerBlock", "PatchMerging", "BasicLayer",
           "PatchEmbed", "shifted_window_mask", "spec_to_kwargs", "swin_tiny", "swin_small", "swin_base",
           "swin_large", "swin_tiny_w14", "swin_small_w14", "swin_base_w14", "swin_pico"]

MASK_VALUE = -100.0  # Swin's additive mask between tokens of different regions (not -inf)


def shifted_window_mask(hp: int, wp: int, window_size: int, shift_size: int,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """Swin's attention mask for shifted windows on a padded ``hp x wp`` grid (multiples of the window).

    Labels the grid with Swin's 9 regions (rows and columns split at ``-window`` and ``-shift``),
    partitions it into windows and returns (num_windows, w*w, w*w) float32 with 0 where two tokens
    share a label and -100 elsewhere. Padded cells are labelled like real ones (they are not masked).
    """
    def regions(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window_size).long() + (idx >= n - shift_size).long()  # 0, 1, 2

    labels = (3 * regions(hp)[:, None] + regions(wp)[None, :]).to(torch.float32)
    windows = window_partition(labels.view(1, hp, wp, 1), (window_size, window_size))
    windows = windows.reshape(-1, window_size * window_size)
    differ = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (shifted) windows with a learnt relative position bias.

    Keys: ``relative_position_bias_table`` ((2w-1)^2, heads), buffer ``relative_position_index``
    (w^2, w^2) int64, ``qkv``, ``proj``. Input (num_windows*B, w^2, C) -> same shape.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.dim = dim
        self.window_size = (window_size, window_size)
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", get_relative_position_index(window_size, window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, w^2, w^2) bias gathered from the table."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def _qkv(self, x: torch.Tensor):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # each (B_, heads, N, head_dim)

    def _bias(self, mask: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Additive attention bias: (1, heads, N, N) without mask, (nW, heads, N, N) with one."""
        bias = self.relative_position_bias().to(dtype).unsqueeze(0)
        return bias if mask is None else bias + mask.to(dtype).unsqueeze(1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` (nW*B, N, C); ``mask`` (nW, N, N) additive or None (windows of one image contiguous)."""
        B_, N, C = x.shape
        q, k, v = self._qkv(x)
        bias = self._bias(mask, q.dtype)
        nW = bias.shape[0]
        if nW > 1:
            # One bias per window position: fold the windows of an image into the head dimension,
            # (nW*B, h, N, d) -> (B, nW*h, N, d), so the (1, nW*h, N, N) bias broadcasts over images
            # and SDPA stays 4-D (5-D inputs fall back to the slow math kernel; expanding the mask
            # to every image would cost B times its memory).
            q, k, v = (t.reshape(B_ // nW, nW * self.num_heads, N, -1) for t in (q, k, v))
            bias = bias.reshape(1, nW * self.num_heads, N, N)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.reshape(B_, self.num_heads, N, -1).transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))

    def attention_probs(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Post-softmax attention (nW*B, heads, N, N), computed explicitly as the original does."""
        B_, N, _ = x.shape
        q, k, _ = self._qkv(x)
        bias = self._bias(mask, q.dtype)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        nW = bias.shape[0]
        attn = (attn.view(B_ // nW, nW, self.num_heads, N, N) + bias).view(B_, self.num_heads, N, N)
        return attn.softmax(dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention block + MLP, both with residual and drop path.

    Window rule (from the *nominal* ``input_resolution``, as EsViT): if ``min(input_resolution) <=
    window_size`` the block uses one window of that size and no shift. At run time the normalised
    features are zero-padded right/bottom to a window multiple; padded tokens are NOT masked (QUIRK:
    they carry the qkv biases and are attended to), then cropped after attention.
    """

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: Callable[..., nn.Module] = nn.GELU,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= window_size:
            shift_size, window_size = 0, min(self.input_resolution)
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must lie in [0, window_size={window_size})")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                    attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def attn_mask(self, hp: int, wp: int, device: torch.device) -> Optional[torch.Tensor]:
        """Shifted-window mask (nW, w^2, w^2) for a padded ``hp x wp`` grid, cached; None if unshifted."""
        if self.shift_size == 0:
            return None
        key = (hp, wp, str(device))
        mask = self._mask_cache.get(key)
        if mask is None:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, reusable under autograd
                mask = shifted_window_mask(hp, wp, self.window_size, self.shift_size, device)
            self._mask_cache[key] = mask
        return mask

    def _windows(self, x: torch.Tensor, hw: tuple[int, int]):
        """norm1, pad, shift, partition: (B, H*W, C) -> windows (nW*B, w^2, C), mask, padded size."""
        B, L, C = x.shape
        H, W = hw
        w, s = self.window_size, self.shift_size
        x = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (w - H % w) % w, (w - W % w) % w
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = H + pad_b, W + pad_r
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, (w, w)).view(-1, w * w, C)
        return windows, self.attn_mask(hp, wp, x.device), (hp, wp)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """``x`` (B, H*W, C) on an ``hw`` = (H, W) grid -> (B, H*W, C)."""
        B, L, C = x.shape
        H, W = hw
        w, s = self.window_size, self.shift_size
        windows, mask, (hp, wp) = self._windows(x, hw)
        out = self.attn(windows, mask).view(-1, w, w, C)
        out = window_reverse(out, (w, w), hp, wp)
        if s > 0:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        if hp != H or wp != W:
            out = out[:, :H, :W, :]
        x = x + self.drop_path(out.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def attention_probs(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Post-softmax attention of this block on input ``x``: (nW*B, heads, w^2, w^2)."""
        windows, mask, _ = self._windows(x, hw)
        return self.attn.attention_probs(windows, mask)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}")


class PatchMerging(nn.Module):
    """2x2 patch merging: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C).

    Odd sizes are zero-padded right/bottom; the four sub-grids are concatenated in the original order
    ``[x(0::2, 0::2), x(1::2, 0::2), x(0::2, 1::2), x(1::2, 1::2)]`` (row offset first), then
    LayerNorm(4C) and a bias-free Linear(4C, 2C). Keys ``reduction.weight``, ``norm.*``.
    """

    def __init__(self, input_resolution: tuple[int, int], dim: int,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        B, L, C = x.shape
        H, W = hw
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        hw = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.reshape(B, -1, 4 * C))), hw

    def extra_repr(self) -> str:
        return f"input_resolution={self.input_resolution}, dim={self.dim}"


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks (shift 0 for even, ``window_size // 2`` for odd ones), then an
    optional ``PatchMerging`` (``downsample``)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float | Sequence[float] = 0.0, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 downsample: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.depth = depth
        dpr = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size=window_size,
                                 shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                                 drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)])
        self.downsample = downsample(input_resolution, dim=dim, norm_layer=norm_layer) if downsample else None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, input_resolution={self.input_resolution}, depth={self.depth}"


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv + optional LayerNorm: (B, 3, H, W) -> (B, H/p*W/p, C), (H/p, W/p)."""

    def __init__(self, img_size: tuple[int, int] = (224, 224), patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, norm_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.patches_resolution = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw


class SwinTransformer(Backbone):
    """EsViT's Swin Transformer backbone (no classifier).

    ``forward(x)`` images (B, 3, H, W) -> view-level feature (B, C): mean of the final-normalised
    last-stage tokens (EsViT's ``forward_features`` without dense prediction).
    ``forward_features(x)`` -> ``Features(pooled (B, C), region tokens (B, L, C))``, L = 49 at 224 px, 9 at
    96 px (``forward_dense``: the same as a tuple).
    ``forward_return_n_last_blocks(x, n, return_patch_avgpool, depths)`` -> (B, sum of widths).
    ``get_last_selfattention(x)`` -> (num_windows*B, heads, w^2, w^2) of the last block.

    ``img_size`` is the nominal resolution that fixes each stage's window/shift (EsViT's rule); inputs
    of any size run. ``C = num_features = embed_dim * 2**(len(depths)-1)``. ``norm_layer`` defaults to
    LayerNorm(eps=1e-6), what EsViT's builder ``get_cls_model`` passes (the class default there is 1e-5).
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6), ape: bool = False,
                 patch_norm: bool = True):
        super().__init__()
        if isinstance(img_size, (list, tuple)):
            img_size = tuple(img_size) if len(img_size) == 2 else (img_size[0], img_size[0])
        else:
            img_size = (img_size, img_size)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        self.depths = list(depths)
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.mlp_ratio = mlp_ratio
        self.window_size = window_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      norm_layer=norm_layer if patch_norm else None)
        res = self.patch_embed.patches_resolution
        self.patches_resolution = res
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(BasicLayer(
                dim=int(embed_dim * 2 ** i), input_resolution=(res[0] // 2 ** i, res[1] // 2 ** i),
                depth=depth, num_heads=num_heads[i], window_size=window_size, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[start:start + depth], norm_layer=norm_layer,
                downsample=PatchMerging if i < self.num_layers - 1 else None))
        self.norm = norm_layer(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Identity()  # EsViT attaches its DINO head here (keys ``head.*``)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # --- trunk ----------------------------------------------------------------------------------
    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, 3, H, W) -> stage-1 tokens (B, H/p*W/p, C) and their grid (H/p, W/p)."""
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        x, hw = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed  # fixed nominal grid, as the original (no interpolation)
        return self.pos_drop(x), hw

    def _block(self, blk: SwinTransformerBlock, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
        return blk(x, hw)

    def _stages(self, x: torch.Tensor, hw: tuple[int, int], collect_from: Optional[int] = None):
        """Run all stages. Returns last-stage tokens (pre-norm), their grid and, when ``collect_from``
        is given, the outputs of every block with global index >= ``collect_from`` (before any
        downsampling) as (stage index, tokens)."""
        feats = []
        idx = 0
        for i, layer in enumerate(self.layers):
            for blk in layer.blocks:
                x = self._block(blk, x, hw)
                if collect_from is not None and idx >= collect_from:
                    feats.append((i, x))
                idx += 1
            if layer.downsample is not None:
                x, hw = layer.downsample(x, hw)
        return x, hw, feats

    def forward_features(self, x: torch.Tensor) -> Features:
        """``Features(pooled (B, C), final-normalised last-stage tokens (B, L, C))``."""
        x, hw = self.prepare_tokens(x)
        x, _, _ = self._stages(x, hw)
        tokens = self.norm(x)
        return Features(tokens.mean(dim=1), tokens)

    def forward_feature_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_dense(x)  # the original's name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """View-level feature (B, C)."""
        return self.forward_features(x).cls

    def forward_return_n_last_blocks(self, x: torch.Tensor, n: int = 1, return_patch_avgpool: bool = False,
                                     depths: Sequence[int] = (), depth: Sequence[int] = ()) -> torch.Tensor:
        """Concatenated average-pooled tokens of the last ``n`` blocks (counted over all stages) (B, D).

        As EsViT: block outputs are taken before the stage's ``PatchMerging``; only last-stage blocks
        pass through the final ``norm``. ``return_patch_avgpool`` is accepted and ignored (the original
        always average-pools). ``depths`` (EsViT's argument is named ``depth``; both accepted) counts
        the blocks; it defaults to the model's own depths. Swin-T, n=4 -> 2*384 + 2*768 = 2304.
        """
        depths = list(depths) or list(depth) or self.depths
        total = sum(depths)
        if not 1 <= n <= total:
            raise ValueError(f"n must lie in [1, {total}], got {n}")
        x, hw = self.prepare_tokens(x)
        _, _, feats = self._stages(x, hw, collect_from=total - n)
        last = self.num_layers - 1
        return torch.cat([(self.norm(f) if i == last else f).mean(dim=1) for i, f in feats], dim=-1)

    # --- attention maps -------------------------------------------------------------------------
    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Post-softmax attention of the last block (num_windows*B, heads, w^2, w^2)."""
        x, hw = self.prepare_tokens(x)
        for i, layer in enumerate(self.layers):
            last_stage = i == self.num_layers - 1
            for j, blk in enumerate(layer.blocks):
                if last_stage and j == len(layer.blocks) - 1:
                    return blk.attention_probs(x, hw)
                x = blk(x, hw)
            if layer.downsample is not None:
                x, hw = layer.downsample(x, hw)
        raise RuntimeError("model has no blocks")

    def get_all_selfattention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention of every block, in order (each (num_windows*B, heads, w^2, w^2))."""
        x, hw = self.prepare_tokens(x)
        out = []
        for layer in self.layers:
            for blk in layer.blocks:
                out.append(blk.attention_probs(x, hw))
                x = blk(x, hw)
            if layer.downsample is not None:
                x, hw = layer.downsample(x, hw)
        return out

    def forward_selfattention(self, x: torch.Tensor, n: int = 1):
        """The original's entry point: last block's attention for ``n == 1``, else all blocks'."""
        return self.get_last_selfattention(x) if n == 1 else self.get_all_selfattention(x)


# --- configuration --------------------------------------------------------------------------------
_SPEC_KEYS = {
    "PATCH_SIZE": "patch_size", "DIM_EMBED": "embed_dim", "DEPTHS": "depths", "NUM_HEADS": "num_heads",
    "WINDOW_SIZE": "window_size", "MLP_RATIO": "mlp_ratio", "QKV_BIAS": "qkv_bias", "QK_SCALE": "qk_scale",
    "DROP_RATE": "drop_rate", "ATTN_DROP_RATE": "attn_drop_rate", "DROP_PATH_RATE": "drop_path_rate",
    "USE_APE": "ape", "PATCH_NORM": "patch_norm",
}
# kwargs the factories honour; ``patch_size`` of the uniform factory interface is ignored (the CLI
# default 16 is a ViT value; every EsViT Swin config uses 4 -- build ``SwinTransformer`` directly for others)
_FACTORY_KWARGS = (frozenset(_SPEC_KEYS.values()) - {"patch_size"}) | {"img_size", "in_chans", "norm_layer"}


def spec_to_kwargs(spec: dict) -> dict:
    """EsViT YAML ``MODEL.SPEC`` (upper-case keys) -> ``SwinTransformer`` constructor kwargs.

    Unknown keys are ignored, as EsViT's builder reads only the ones it knows. ``img_size`` comes from
    ``TRAIN.IMAGE_SIZE[0]``, not from the spec; teachers use ``drop_path_rate=0`` (set by the caller).
    """
    out = {}
    for key, name in _SPEC_KEYS.items():
        if key in spec:
            value = spec[key]
            out[name] = list(value) if name in ("depths", "num_heads") else value
    return out


def _swin(defaults: dict, kwargs: dict) -> SwinTransformer:
    """``SwinTransformer`` from ``defaults`` overridden by the honoured ``kwargs``; the rest (e.g.
    ``patch_size``, ``num_classes``, ``use_dense_prediction``) is ignored like timm's ``create_model``."""
    cfg = dict(defaults)
    cfg.update({k: v for k, v in kwargs.items() if k in _FACTORY_KWARGS and v is not None})
    if kwargs.get("cfg_patch_size") is not None:  # PATCH_SIZE of an EsViT --cfg file (esvit_config)
        cfg["patch_size"] = kwargs["cfg_patch_size"]
    return SwinTransformer(**cfg)


_TINY = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], drop_path_rate=0.1)
_SMALL = dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], drop_path_rate=0.2)
_BASE = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], drop_path_rate=0.2)
_LARGE = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], drop_path_rate=0.2)


@register_backbone(aliases=("swin",))
def swin_tiny(window_size: int = 7, **kwargs) -> SwinTransformer:
    """Swin-T: C=96, depths 2-2-6-2, heads 3-6-12-24, drop path 0.1 (27.5 M params)."""
    return _swin({**_TINY, "window_size": window_size}, kwargs)


@register_backbone
def swin_small(window_size: int = 7, **kwargs) -> SwinTransformer:
    """Swin-S: C=96, depths 2-2-18-2, heads 3-6-12-24, drop path 0.2."""
    return _swin({**_SMALL, "window_size": window_size}, kwargs)


@register_backbone
def swin_base(window_size: int = 7, **kwargs) -> SwinTransformer:
    """Swin-B: C=128, depths 2-2-18-2, heads 4-8-16-32, drop path 0.2."""
    return _swin({**_BASE, "window_size": window_size}, kwargs)


@register_backbone
def swin_large(window_size: int = 7, **kwargs) -> SwinTransformer:
    """Swin-L: C=192, depths 2-2-18-2, heads 6-12-24-48, drop path 0.2 (EsViT's ``swin_large`` YAML)."""
    return _swin({**_LARGE, "window_size": window_size}, kwargs)


@register_backbone
def swin_tiny_w14(**kwargs) -> SwinTransformer:
    """Swin-T with 14x14 windows."""
    return swin_tiny(**{**kwargs, "window_size": 14})


@register_backbone
def swin_small_w14(**kwargs) -> SwinTransformer:
    """Swin-S with 14x14 windows."""
    return swin_small(**{**kwargs, "window_size": 14})


@register_backbone
def swin_base_w14(**kwargs) -> SwinTransformer:
    """Swin-B with 14x14 windows."""
    return swin_base(**{**kwargs, "window_size": 14})


@register_backbone
def swin_pico(window_size: int = 7, **kwargs) -> SwinTransformer:
    """CPU-sized Swin for tests: C=24, depths 1-1-2-1, heads 1-2-3-4, window 7 (same window rule and
    stage layout as Swin-T, so 224/96-px crops exercise padding and masking)."""
    return _swin(dict(embed_dim=24, depths=[1, 1, 2, 1], num_heads=[1, 2, 3, 4], drop_path_rate=0.1,
                      window_size=window_size), kwargs)
