"""Vision Transformer with the DINO interface, built on timm's ``VisionTransformer``.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), as used by DINO
(facebookresearch/dino ``vision_transformer.py``): pre-norm blocks, fused qkv, LayerNorm eps 1e-6,
CLS token, learnt position embeddings interpolated to any input size with DINO's exact rule.

State-dict keys equal the original DINO ViT's (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``) so released DINO
backbones load as they are. Training runs timm's fused attention (``F.scaled_dot_product_attention``);
the explicit softmax is computed only when an attention map is asked for.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer as _TimmViT

from .backbone import Backbone, Features


def interpolate_pos_encoding_esvit(pos_embed: torch.Tensor, npatch: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """EsViT's ViT rule: bicubic with the single scale factor ``sqrt(npatch / N)`` (square grids,
    no +0.1 offset); identity when ``npatch == N``. (1, P+N, D) -> (1, P+npatch, D)."""
    N = pos_embed.shape[1] - num_prefix_tokens
    if npatch == N:
        return pos_embed
    dim, side = pos_embed.shape[-1], int(math.sqrt(N))
    patch_pos = F.interpolate(pos_embed[:, num_prefix_tokens:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
                              scale_factor=math.sqrt(npatch / N), mode="bicubic")
    if patch_pos.shape[-2] * patch_pos.shape[-1] != npatch:
        raise RuntimeError(f"EsViT pos-embed interpolation produced {tuple(patch_pos.shape[-2:])} for {npatch} patches")
    return torch.cat((pos_embed[:, :num_prefix_tokens], patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def interpolate_pos_encoding(pos_embed: torch.Tensor, h_patches: int, w_patches: int,
                             num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample DINO's position embeddings to a ``h_patches x w_patches`` grid.

    ``pos_embed`` (1, P+N, D) with P prefix (CLS) slots and a square grid of N positions.
    Returns (1, P + h*w, D). Reproduces DINO's numerics exactly (QUIRK): bicubic with the
    *scale factors* ``((h+0.1)/sqrt(N), (w+0.1)/sqrt(N))``, not the target size, so the sample
    positions differ from size-based resizing (timm's ``resample_abs_pos_embed``).
    """
    npatch = h_patches * w_patches
    N = pos_embed.shape[1] - num_prefix_tokens
    if npatch == N and h_patches == w_patches:
        return pos_embed
    prefix_pos = pos_embed[:, :num_prefix_tokens]
    patch_pos = pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    side = int(math.sqrt(N))
    if side * side != N:
        raise ValueError(f"position embeddings hold {N} patch positions, not a square grid")
    h0, w0 = h_patches + 0.1, w_patches + 0.1
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / side, w0 / side),
        mode="bicubic",
        align_corners=False,
    )
    if patch_pos.shape[-2] != h_patches or patch_pos.shape[-1] != w_patches:
        raise RuntimeError(f"pos-embed interpolation produced {tuple(patch_pos.shape[-2:])}, "
                           f"expected ({h_patches}, {w_patches})")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((prefix_pos, patch_pos), dim=1)


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Post-softmax attention of a timm ``Attention`` module on (already normed) tokens ``x`` (B, N, D).

    Returns (B, heads, N, N); the same computation the fused kernel performs internally.
    """
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class VisionTransformer(Backbone, _TimmViT):
    """timm ViT with DINO's behaviour: any input size, CLS output, attention maps, patch masking.

    ``forward(x)`` -> CLS token after the final norm (B, D) (like DINO's ``forward``); all tokens
    (B, 1+N, D) when built / called with ``return_all_tokens`` (iBOT).
    ``forward_tokens(x, mask=None)`` -> all normed tokens (B, 1+N, D); ``forward_features(x)`` ->
    ``Features(cls, patch_tokens)`` (``ssvit.models.backbone``); ``forward_intermediates(x, n)`` /
    ``get_intermediate_layers(x, n)`` -> the last ``n`` blocks' normed tokens.
    ``get_last_selfattention(x)`` -> (B, heads, 1+N, 1+N); ``get_all_selfattention(x)`` -> one such
    map per block.
    ``mask`` (B, h, w) bool replaces masked patch embeddings by ``masked_embed`` before the position
    embedding is added (iBOT); only when built with ``masked_im_modeling=True``.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 0, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 masked_im_modeling: bool = False, return_all_tokens: bool = False, pos_embed_rule: str = "dino",
                 **kwargs):
        if isinstance(img_size, (list, tuple)):
            img_size = img_size[0]  # DINO passes img_size as a list and uses its first entry
        kwargs.pop("qk_scale", None)
        kwargs.pop("norm_layer", None)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool="token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs,
        )
        self.patch_size = patch_size
        trunc_normal_(self.cls_token, std=0.02)  # DINO init (timm uses normal std 1e-6)
        self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim)) if masked_im_modeling else None
        self.masked_im_modeling = masked_im_modeling
        self.return_all_tokens = return_all_tokens
        if pos_embed_rule not in ("dino", "esvit"):
            raise ValueError(f"pos_embed_rule must be 'dino' or 'esvit', got {pos_embed_rule!r}")
        self.pos_embed_rule = pos_embed_rule  # EsViT's ViT resamples without DINO's +0.1 offset

    # --- token preparation ------------------------------------------------------------------
    def prepare_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, 1 + H/p * W/p, D) with CLS and interpolated pos-embed."""
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # (B, h, w, D)
        B, h, w, D = x.shape
        if mask is not None and self.masked_im_modeling and self.masked_embed is not None:
            x = torch.where(mask.unsqueeze(-1), self.masked_embed.to(x.dtype).view(1, 1, 1, D), x)
        x = x.reshape(B, h * w, D)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        if self.pos_embed_rule == "esvit" and h == w:
            x = x + interpolate_pos_encoding_esvit(self.pos_embed, h * w, self.num_prefix_tokens)
        else:
            x = x + interpolate_pos_encoding(self.pos_embed, h, w, self.num_prefix_tokens)
        return self.pos_drop(x)

    def forward_blocks(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens after the last block, *before* the final norm (B, 1+N, D) (SERE reads these)."""
        x = self.prepare_tokens(x, mask)
        if self.grad_checkpointing and self.training:
            from timm.models._manipulate import checkpoint_seq
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    is_token_model = True

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All tokens after the final norm (B, 1+N, D)."""
        return self.norm(self.forward_blocks(x, mask))

    def forward_features(self, x: torch.Tensor) -> Features:
        """``Features(cls (B, D), patch_tokens (B, N, D))``, both final-normed (EsViT's dense output)."""
        x = self.forward_tokens(x)
        return Features(x[:, 0], x[:, self.num_prefix_tokens:])

    def forward_intermediates(self, x: torch.Tensor, n: int = 1, norm: bool = True) -> list[torch.Tensor]:
        return self.get_intermediate_layers(x, n, norm)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                return_all_tokens: Optional[bool] = None) -> torch.Tensor:
        """CLS (B, D), or all normed tokens (B, 1+N, D) with ``return_all_tokens`` (argument, else
        the attribute -- iBOT builds its backbones with ``return_all_tokens=True``)."""
        x = self.forward_tokens(x, mask)
        if self.return_all_tokens if return_all_tokens is None else return_all_tokens:
            return x
        return self.forward_head(x)

    # --- analysis helpers -------------------------------------------------------------------
    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        last = self.blocks[-1]
        return attention_probs(last.attn, last.norm1(x))

    def get_all_selfattention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Post-softmax attention of every block, in order: each (B, heads, 1+N, 1+N)."""
        x = self.prepare_tokens(x)
        out = []
        for blk in self.blocks:
            out.append(attention_probs(blk.attn, blk.norm1(x)))
            x = blk(x)
        return out

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1, norm: bool = True) -> list[torch.Tensor]:
        """Final-normed tokens (B, 1+N, D) of the last ``n`` blocks, oldest first. ``norm=False``
        returns the raw block outputs (iBOT's ``use_mean_pooling`` models, whose ``norm`` is Identity)."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x) if norm else x)
        return out

    def forward_return_n_last_blocks(self, x: torch.Tensor, n: int = 1, return_patch_avgpool: bool = False,
                                     depths: Sequence[int] = (), depth: Sequence[int] = ()) -> torch.Tensor:
        """EsViT's ViT linear-probe feature: the normed CLS tokens of the last ``n`` blocks, then (with
        ``return_patch_avgpool``) the mean normed patch token of the last block, concatenated
        (B, D * (n + avgpool)) -- not interleaved (DINO's layout is). ``depths`` is unused."""
        out = self.get_intermediate_layers(x, n)
        feats = [o[:, 0] for o in out]
        if return_patch_avgpool:
            feats.append(out[-1][:, self.num_prefix_tokens:].mean(dim=1))
        return torch.cat(feats, dim=-1)

    def no_weight_decay(self):
        return set()  # DINO decays pos_embed / cls_token (QUIRK, see training spec §4)
