"""Vision Longformer (ViL, ``MsViT``) with EsViT's interface.

Zhang et al., "Multi-Scale Vision Longformer" (ICCV 2021), as modified by EsViT (microsoft/esvit
``models/vision_longformer.py``, ``layers/longformer2d.py``, ``layers/slidingchunk_2d.py``; spec
backbones.md §5). A stack of 3-4 stages ``layer{k} = Sequential(PatchEmbed, AttnBlock, MlpBlock, ...)``
described by an arch string (:func:`parse_arch`). Stages use either the 2-D sliding-chunk Longformer
attention (each query chunk of WxW tokens attends to its own and the 8 neighbouring chunks, plus the
stage's global tokens) or full attention.

This is a pure-PyTorch re-implementation (no CUDA kernel): the 9 neighbour chunks are gathered with a
single ``index_select`` and the attention runs through ``F.scaled_dot_product_attention`` with an
additive float mask (relative-position bias, -inf on invalid keys); the explicit softmax is computed
only when attention maps are asked for. State-dict keys, shapes and buffers equal the original
EsViT backbone's, so EsViT ViL checkpoints (teacher/student after stripping ``module.`` and dropping
``head.*`` / ``head_dense.*``) load with ``strict=True``.

QUIRKs of the original reproduced here (see the docstrings where they live):
* every LayerNorm uses eps 1e-6 whatever ``ln_eps`` says (the original stores it and never uses it);
* a full-attention stage (``s0``) switches every *later* stage to full attention too;
* absolute pos-embed resampling counts the global tokens in ``npatch`` (resampled even at 224 px);
* the full-attention relative bias (N x N x heads) is resized bicubically as an image for other sizes;
* ``mode > 0`` draws the neighbour chunk with Python's ``random.randrange(1, 9)`` once per call;
* ``sw_exact=-1`` (cyclic) masks padding only in chunks of the last row/column *before* wrapping.

Deliberate differences (only where the original fails or has nothing): resampled tables always get
the size of the actual map (the original's ``scale_factor`` interpolation can round one short and
crash, e.g. the stage-3 bias at 64 or 128 px, and assumes square maps); an empty ``depths`` in
``forward_return_n_last_blocks`` means the model's own (the original raises ``NameError``);
``get_last_selfattention`` / ``get_all_selfattention`` (absent in the original) return dense
(B, heads, N, N) maps. Not implemented (raise): ``r1`` (add_pooled), SE/ECA layers,
Linformer/Performer/SR attention types.
"""
from __future__ import annotations

import inspect
import math
import random
import re
from functools import lru_cache
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

from .backbone import Backbone, Features
from .registry import register_backbone

__all__ = ["MsViT", "SlidingChunkAttention", "FullAttention", "PatchEmbed", "parse_arch", "spec_to_kwargs",
           "vil", "vil_2262", "vil_small", "vil_pico", "VIL_2262_ARCH", "VIL_SMALL_ARCH", "VIL_PICO_ARCH"]

LN_EPS = 1e-6  # QUIRK: the original's LayerNorms all use 1e-6 (``ln_eps`` is ignored)

VIL_2262_ARCH = ("l1,h3,d96,n2,s1,g1,p4,f7,a0_l2,h6,d192,n2,s1,g1,p2,f7,a0_"
                 "l3,h12,d384,n6,s0,g1,p2,f7,a0_l4,h24,d768,n2,s0,g0,p2,f7,a0")
VIL_SMALL_ARCH = ("l1,h3,d96,n1,s1,g1,p4,f7_l2,h3,d192,n2,s1,g1,p2,f7_"
                  "l3,h6,d384,n8,s0,g1,p2,f7_l4,h12,d768,n1,s0,g0,p2,f7")
VIL_PICO_ARCH = ("l1,h1,d16,n1,s1,g1,p4,f7,a0_l2,h2,d32,n1,s1,g1,p2,f7,a0_"
                 "l3,h2,d48,n1,s0,g1,p2,f7,a0_l4,h4,d64,n1,s0,g0,p2,f7,a0")

# Field defaults of the arch string (EsViT's parser; ``r`` is EsViT-only).
_ARCH_DEFAULTS = {"l": 1, "h": 3, "d": 192, "n": 1, "s": 1, "g": 1, "p": 2, "f": 7, "a": 1, "r": 0}
# Neighbour chunk offsets (row, col) in the original's key order; index 4 is the query's own chunk.
_NEIGHBOURS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
_SLIDING_TYPES = ("longformerhand", "longformerauto")  # hand-written vs autograd backward: same numerics


# ------------------------------------------------------------------------------------------------
# arch string
# ------------------------------------------------------------------------------------------------
def parse_arch(arch: str) -> list[dict[str, int]]:
    """Parse ``'l1,h3,d96,n2,s1,g1,p4,f7,a0_l2,...'`` into one dict per stage (missing fields take
    the defaults ``l1,h3,d192,n1,s1,g1,p2,f7,a1,r0``). Raises ``ValueError`` on malformed input."""
    if not isinstance(arch, str) or not arch.strip():
        raise ValueError("arch must be a non-empty string such as 'l1,h3,d96,n2,s1,g1,p4,f7,a0_l2,...'")
    stages = []
    for pos, stage in enumerate(arch.strip().split("_"), start=1):
        cfg, seen = dict(_ARCH_DEFAULTS), set()
        for field in stage.split(","):
            field = field.strip()
            m = re.fullmatch(r"([a-z])(\d+)", field)
            if m is None:
                raise ValueError(f"arch {arch!r}, stage {pos}: malformed field {field!r} "
                                 "(expected a letter followed by a non-negative integer, e.g. 'h3')")
            key, val = m.group(1), int(m.group(2))
            if key not in _ARCH_DEFAULTS:
                raise ValueError(f"arch {arch!r}, stage {pos}: unknown field {key!r} "
                                 f"(known: {', '.join(_ARCH_DEFAULTS)})")
            if key in seen:
                raise ValueError(f"arch {arch!r}, stage {pos}: field {key!r} given twice")
            seen.add(key)
            cfg[key] = val
        if cfg["l"] != pos:
            raise ValueError(f"arch {arch!r}: stage {pos} is labelled l{cfg['l']}; stages must be "
                             "l1, l2, l3[, l4] in this order")
        for key, ok, what in (("h", cfg["h"] >= 1, ">= 1"), ("d", cfg["d"] >= 1, ">= 1"),
                              ("n", cfg["n"] >= 1, ">= 1"), ("p", cfg["p"] >= 1, ">= 1"),
                              ("f", cfg["f"] >= 1, ">= 1"), ("s", cfg["s"] in (0, 1), "0 or 1"),
                              ("a", cfg["a"] in (0, 1), "0 or 1"), ("r", cfg["r"] in (0, 1), "0 or 1")):
            if not ok:
                raise ValueError(f"arch {arch!r}, stage {pos}: {key}{cfg[key]} must be {what}")
        if cfg["d"] % cfg["h"]:
            raise ValueError(f"arch {arch!r}, stage {pos}: dim d{cfg['d']} is not divisible by h{cfg['h']}")
        if cfg["a"] == 1 and cfg["d"] % 2:
            raise ValueError(f"arch {arch!r}, stage {pos}: absolute 2-D position embedding (a1) needs an even dim")
        stages.append(cfg)
    if len(stages) not in (3, 4):
        raise ValueError(f"arch {arch!r} has {len(stages)} stages; only 3- or 4-stage models exist")
    return stages


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _resize_bicubic(img: torch.Tensor, size: tuple[int, int], scale: float) -> torch.Tensor:
    """Bicubic resize of (1, C, h, w) to ``size`` sampling with ``scale`` (align_corners=False).

    Equals ``F.interpolate(img, scale_factor=scale, mode='bicubic')`` (the original's call) whenever
    that returns ``size``; calling the aten op with both size and scale also covers the sizes where
    ``floor(h * scale)`` rounds one short and the original crashes (e.g. 196 * 16/196 -> 15).
    """
    return torch.ops.aten.upsample_bicubic2d.default(img, list(size), False, scale, scale)


def _neighbour_ids(mode: int) -> tuple[int, ...]:
    """Neighbour chunks (indices into ``_NEIGHBOURS``) used by a sliding-chunk ``mode``."""
    if mode == 0:
        return tuple(range(9))
    if mode == -1:
        return (4,)
    # random neighbour m in 1..8: 1 up-left, 2 up, 3 up-right, 4 left, 5 right, 6 down-left, ...
    return (4, mode if mode > 4 else mode - 1)


def sliding_rpe_index(w: int) -> torch.Tensor:
    """(W^2, 9W^2) index into the ((4W-1)^2, heads) table: query at (x, y) of its chunk vs key at
    (x', y') of neighbour chunk (dx, dy) -> offset (x - dx*W - x', y - dy*W - y') shifted to >= 0."""
    q = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # 2, W^2
    k = torch.cat([q + torch.tensor([dx * w, dy * w]).view(2, 1) for dx, dy in _NEIGHBOURS], dim=1)
    rel = q[:, :, None] - k[:, None, :] + (2 * w - 1)
    return rel[0] * (4 * w - 1) + rel[1]


def full_rpe_index(wx: int, wy: int) -> torch.Tensor:
    """(wx*wy, wx*wy) Swin-style relative-position index into a ((2wx-1)(2wy-1), heads) table."""
    coords = torch.stack(torch.meshgrid(torch.arange(wx), torch.arange(wy), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wx - 1) * (2 * wy - 1) + (rel[1] + wy - 1)


@lru_cache(maxsize=256)
def _sliding_geometry(nx: int, ny: int, w: int, nglo: int, nbrs: tuple[int, ...], exact: int, device: str):
    """Index bookkeeping of the sliding-chunk attention for an nx x ny map in WxW chunks (cached).

    The map is (virtually) zero-padded to mx*W x my*W and cut into mx*my chunks. Returns
    ``q_index`` (mx*my*W^2,): local token of every chunk position (padding -> 0, its output is dropped);
    ``key_index`` (mx*my*(G+K),): for every chunk its G global keys then the W^2 keys of each neighbour
    chunk, as rows of [G global; nx*ny local; one zero row] -- neighbours wrap around cyclically (as
    ``torch.roll`` in the original), padded keys point to the zero row (``exact=-1``) or, being
    masked anyway, to row 0; ``out_index`` (nx*ny,): chunk
    position of every local token; ``invalid`` bool (mx*my, 1 or W^2, G+K): keys masked with -inf.
    ``exact=0``: neighbours outside the map and padded positions; ``exact=-1`` (cyclic): padding of
    chunks whose *unwrapped* row/column is the last one (QUIRK: wrapped-in padding stays visible as
    zero keys); ``exact=1``: exact sliding window of radius W around each query (mode 0 only).
    """
    mx, my = -(-nx // w), -(-ny // w)
    padx, pady = mx * w - nx, my * w - ny
    nloc = nx * ny
    # token id (local index) of every padded-map position; padding -> -1
    tok = torch.full((mx * w, my * w), -1, dtype=torch.long)
    tok[:nx, :ny] = torch.arange(nloc).view(nx, ny)
    tok_chunks = tok.view(mx, w, my, w).transpose(1, 2).reshape(mx * my, w * w)
    q_index = tok_chunks.reshape(-1).clamp(min=0)
    out_index = torch.nonzero(tok_chunks.reshape(-1) >= 0).squeeze(1)
    out_index = out_index[torch.argsort(tok_chunks.reshape(-1)[out_index])]

    off = torch.tensor([_NEIGHBOURS[i] for i in nbrs])
    # dims: (chunk row, chunk col, neighbour, key row in chunk, key col in chunk)
    rx = torch.arange(mx).view(mx, 1, 1, 1, 1) + off[:, 0].view(1, 1, -1, 1, 1)
    ry = torch.arange(my).view(1, my, 1, 1, 1) + off[:, 1].view(1, 1, -1, 1, 1)
    kx = torch.arange(w).view(1, 1, 1, w, 1)
    ky = torch.arange(w).view(1, 1, 1, 1, w)
    src = ((rx % mx) * my + ry % my).view(mx * my, len(nbrs))  # source chunk of every neighbour
    keys = tok_chunks[src].view(mx * my, -1)
    # padded keys: the zero row in cyclic mode (they can stay unmasked), else any row (always masked)
    keys = torch.where(keys >= 0, keys + nglo, nglo + nloc if exact == -1 else 0)
    key_index = torch.cat([torch.arange(nglo).expand(mx * my, nglo), keys], dim=1).reshape(-1)

    ax, ay = rx * w + kx, ry * w + ky  # unwrapped absolute key coordinates
    if exact == 0:
        invalid = (rx < 0) | (rx >= mx) | (ax >= nx) | (ry < 0) | (ry >= my) | (ay >= ny)
        invalid = invalid.expand(mx, my, len(nbrs), w, w).reshape(mx * my, 1, -1)
    elif exact == -1:
        invalid = ((rx == mx - 1) & (kx >= w - padx)) | ((ry == my - 1) & (ky >= w - pady))
        invalid = invalid.expand(mx, my, len(nbrs), w, w).reshape(mx * my, 1, -1)
    elif exact == 1:
        # add query dims: (chunk row, chunk col, q row, q col, neighbour, key row, key col)
        qx = (torch.arange(mx).view(mx, 1, 1, 1) * w + torch.arange(w).view(1, 1, w, 1)).view(mx, 1, w, 1, 1, 1, 1)
        qy = (torch.arange(my).view(1, my, 1, 1) * w + torch.arange(w).view(1, 1, 1, w)).view(1, my, 1, w, 1, 1, 1)
        ax7, ay7 = ax.unsqueeze(2).unsqueeze(2), ay.unsqueeze(2).unsqueeze(2)
        invalid = ((ax7 < (qx - w).clamp(min=0)) | (ax7 > (qx + w).clamp(max=nx - 1))
                   | (ay7 < (qy - w).clamp(min=0)) | (ay7 > (qy + w).clamp(max=ny - 1)))
        invalid = invalid.expand(mx, my, w, w, len(nbrs), w, w).reshape(mx * my, w * w, -1)
    else:
        raise ValueError(f"sw_exact must be 0, 1 or -1, got {exact}")
    invalid = F.pad(invalid, (nglo, 0))  # global keys are never masked
    return tuple(t.to(device) for t in (q_index, key_index, out_index, invalid))


def _attend(q, k, v, mask, scale: float, dropout: nn.Dropout, training: bool, return_attn: bool):
    """softmax(q k^T * scale + mask) v; also returns the probabilities when asked (explicit path)."""
    if return_attn:
        attn = (q @ k.transpose(-2, -1)) * scale
        if mask is not None:
            attn = attn + mask
        attn = attn.softmax(dim=-1)
        return dropout(attn) @ v, attn
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                         dropout_p=dropout.p if training else 0.0)
    return out, None


# ------------------------------------------------------------------------------------------------
# attention modules
# ------------------------------------------------------------------------------------------------
def _add_global_rpe(module: nn.Module, num_heads: int, nglo: int) -> None:
    """Global-token relative biases shared by both attention types: ``g2l_relative_position_bias``
    (2, heads, g) and ``g2g_relative_position_bias`` (heads, g, g), trunc-normal 0.02."""
    if nglo >= 1:
        module.g2l_relative_position_bias = nn.Parameter(torch.zeros(2, num_heads, nglo))
        module.g2g_relative_position_bias = nn.Parameter(torch.zeros(num_heads, nglo, nglo))
        trunc_normal_(module.g2l_relative_position_bias, std=0.02)
        trunc_normal_(module.g2g_relative_position_bias, std=0.02)


class SlidingChunkAttention(nn.Module):
    """2-D sliding-chunk Longformer attention with global tokens (EsViT ``Long2DSCSelfAttention``).

    ``forward(x, nx, ny)`` with x (B, G + nx*ny, C) = [G global tokens; row-major nx x ny map].
    Local queries: the map is zero-padded to multiples of W and cut into WxW chunks; each query
    attends jointly (one softmax) to the G global keys and to the keys of its own + 8 neighbour
    chunks (``mode 0``), its own chunk only (``mode -1``) or its own + one random neighbour chunk
    drawn per call in training (``mode > 0``; full in eval). Global queries attend to all N tokens
    with the ``*_global`` projections (the same modules when ``sharew``). With ``rpe`` a
    ((4W-1)^2, heads) table biases local->local scores, ``g2l_relative_position_bias`` (2, heads, G)
    the local<->global ones and ``g2g_relative_position_bias`` (heads, G, G) global->global.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, w: int = 7, sharew: bool = False,
                 nglo: int = 1, only_glo: bool = False, exact: int = 0, rpe: bool = False, mode: int = 0):
        super().__init__()
        if exact not in (-1, 0, 1):
            raise ValueError(f"sw_exact must be 0, 1 or -1, got {exact}")
        if only_glo and nglo < 1:
            raise ValueError("only_glo needs at least one global token (g >= 1)")
        if mode < -1:
            raise ValueError(f"vil mode must be -1, 0 or > 0, got {mode}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.nglo, self.only_glo, self.window, self.exact, self.mode = nglo, only_glo, w, exact, mode

        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if nglo >= 1:
            if sharew:  # same modules under two names: the state dict holds both (SHARE_W)
                self.query_global, self.kv_global, self.proj_global = self.query, self.kv, self.proj
            else:
                self.query_global = nn.Linear(dim, dim, bias=qkv_bias)
                self.kv_global = nn.Linear(dim, dim * 2, bias=qkv_bias)
                self.proj_global = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

        self.rpe = rpe
        if rpe:
            self.local_relative_position_bias_table = nn.Parameter(torch.zeros((4 * w - 1) ** 2, num_heads))
            trunc_normal_(self.local_relative_position_bias_table, std=0.02)
            _add_global_rpe(self, num_heads, nglo)
            self.register_buffer("relative_position_index", sliding_rpe_index(w))

    def current_mode(self) -> int:
        """The neighbour mode of this call: ``mode > 0`` draws ``random.randrange(1, 9)`` (Python's
        global RNG, as the original) in training and means "all 9 chunks" (0) in eval."""
        if self.mode > 0:
            return random.randrange(1, 9) if self.training else 0
        return self.mode

    def forward(self, x: torch.Tensor, nx: int, ny: int, return_attn: bool = False):
        """x (B, G + nx*ny, C) -> (B, G + nx*ny, C); with ``return_attn`` also the post-softmax
        probabilities scattered into a dense (B, heads, N, N) matrix (zeros outside each window)."""
        B, N, C = x.shape
        G, H, M = self.nglo, self.num_heads, self.head_dim
        nloc = nx * ny
        if N != G + nloc:
            raise ValueError(f"got {N} tokens, expected {G} global + {nx}x{ny} local")
        mode = self.current_mode()
        if self.exact == 1 and mode != 0:
            raise ValueError("sw_exact=1 (exact sliding window) supports only the full neighbourhood (mode 0)")

        k, v = self.kv(x).view(B, N, 2, H, M).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, M) views
        q = self.query(x).view(B, N, H, M).transpose(1, 2)
        if self.only_glo:  # local queries see the global tokens only (no bias, as the original)
            out, p_loc = _attend(q[:, :, G:], k[:, :, :G], v[:, :, :G], None, self.scale, self.attn_drop,
                                 self.training, return_attn)
            out = out.transpose(1, 2)
        else:
            out, p_loc = self._local_attention(q, k, v, nx, ny, mode, return_attn)
        x_loc = self.proj(out.reshape(B, nloc, C))
        if G == 0:
            out = self.proj_drop(x_loc)
            return (out, self._dense_probs(p_loc, None, nx, ny, mode)) if return_attn else out

        q_g = q[:, :, :G] if self.query_global is self.query else \
            self.query_global(x[:, :G]).view(B, G, H, M).transpose(1, 2)
        if self.kv_global is self.kv:
            k_g, v_g = k, v
        else:
            k_g, v_g = self.kv_global(x).view(B, N, 2, H, M).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.rpe:
            bias = torch.cat([self.g2g_relative_position_bias,
                              self.g2l_relative_position_bias[0].unsqueeze(-1).expand(-1, -1, nloc)], dim=-1)
            bias = bias.unsqueeze(0).to(q_g.dtype)  # (1, H, G, N)
        out_g, p_glo = _attend(q_g, k_g, v_g, bias, self.scale, self.attn_drop, self.training, return_attn)
        x_g = self.proj_global(out_g.transpose(1, 2).reshape(B, G, C))
        out = self.proj_drop(torch.cat((x_g, x_loc), dim=1))
        return (out, self._dense_probs(p_loc, p_glo, nx, ny, mode)) if return_attn else out

    def _local_mask(self, nbrs, invalid, dtype) -> torch.Tensor:
        """Additive mask (1, H*chunks, 1 or W^2, G + K): rpe bias, -inf on invalid local keys."""
        G, H, W2 = self.nglo, self.num_heads, self.window ** 2
        nchunks, S = invalid.shape[0], invalid.shape[-1]
        if self.rpe:
            idx = self.relative_position_index.view(W2, 9, W2)[:, list(nbrs)].reshape(-1)
            bias = self.local_relative_position_bias_table[idx].view(W2, S - G, H).permute(2, 0, 1)
            if G:
                glo = self.g2l_relative_position_bias[1].unsqueeze(1).expand(H, W2, G)
                bias = torch.cat([glo, bias], dim=-1)
            bias = bias.unsqueeze(1).to(dtype)  # (H, 1, W2, S)
        else:
            bias = torch.zeros(1, 1, 1, S, dtype=dtype, device=invalid.device)
        mask = bias.masked_fill(invalid.unsqueeze(0), float("-inf"))  # (H|1, chunks, W2|1, S)
        return mask.expand(H, -1, -1, -1).reshape(1, H * nchunks, mask.shape[-2], S)

    def _local_attention(self, q, k, v, nx, ny, mode, return_attn):
        """Local queries of q (B, H, N, M) against global + neighbour-chunk keys of k, v (B, H, N, M).

        Returns the local outputs (B, nx*ny, H, M) and, if asked, probabilities (B, H, chunks*W^2, G+K).
        """
        B, H, N, M = q.shape
        G, W = self.nglo, self.window
        nbrs = _neighbour_ids(mode)
        q_index, key_index, out_index, invalid = _sliding_geometry(nx, ny, W, G, nbrs, self.exact, str(q.device))
        nchunks = invalid.shape[0]
        if self.exact == -1:  # padded keys must be zero vectors (they can be unmasked)
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))
        # single gathers straight from the projections: chunked queries (B, H*chunks, W^2, M) and the
        # keys / values of every chunk (B, H*chunks, G+K, M) (heads and chunks share one batch axis)
        qc = q[:, :, G:].index_select(2, q_index).view(B, H * nchunks, W * W, M)
        kc = k.index_select(2, key_index).view(B, H * nchunks, -1, M)
        vc = v.index_select(2, key_index).view(B, H * nchunks, -1, M)
        mask = self._local_mask(nbrs, invalid, q.dtype)
        out, probs = _attend(qc, kc, vc, mask, self.scale, self.attn_drop, self.training, return_attn)
        out = out.reshape(B, H, nchunks * W * W, M).transpose(1, 2).index_select(1, out_index)
        if probs is not None:
            probs = probs.reshape(B, H, nchunks * W * W, -1)
        return out, probs

    def _dense_probs(self, p_loc, p_glo, nx, ny, mode) -> torch.Tensor:
        """Scatter local probabilities (B, H, chunks*W^2, G+K) -- or (B, H, nx*ny, G) with ``only_glo``
        -- and global ones (B, H, G, N) into (B, H, N, N). Probabilities of padded keys (zero vectors,
        unmasked only in cyclic mode) are dropped; a key seen through several wrapped neighbours sums."""
        G = self.nglo
        N = G + nx * ny
        B, H = p_loc.shape[:2]
        if self.only_glo:
            dense_loc = F.pad(p_loc, (0, N - G))
        else:
            nbrs = _neighbour_ids(mode)
            _, key_index, out_index, invalid = _sliding_geometry(nx, ny, self.window, G, nbrs, self.exact,
                                                                 str(p_loc.device))
            cols = key_index.view(invalid.shape[0], -1).repeat_interleave(self.window ** 2, dim=0)
            dense = p_loc.new_zeros(B, H, p_loc.shape[2], N + 1)
            dense.scatter_add_(-1, cols.expand(B, H, -1, -1), p_loc)
            dense_loc = dense[:, :, out_index, :N]
        if p_glo is None:
            return dense_loc
        return torch.cat([p_glo, dense_loc], dim=2)


class FullAttention(nn.Module):
    """Full multi-head attention with EsViT's relative-position bias (``Attention`` of MsViT).

    With ``rpe``: a ((2wx-1)(2wy-1), heads) table indexed for the nominal wx x wy grid, plus
    ``g2l_relative_position_bias`` (2, heads, G) and ``g2g_relative_position_bias`` (heads, G, G).
    QUIRK: at another resolution the (wx*wy, wx*wy, heads) bias is resized bicubically *as an
    image* with scale factor npatch / (wx*wy) (e.g. 196x196 -> 36x36 at 96 px).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, rpe: bool = False, wx: int = 14, wy: int = 14,
                 nglo: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.nglo = nglo
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpe = rpe
        if rpe:
            self.wx, self.wy = wx, wy
            self.local_relative_position_bias_table = nn.Parameter(torch.zeros((2 * wx - 1) * (2 * wy - 1), num_heads))
            trunc_normal_(self.local_relative_position_bias_table, std=0.02)
            _add_global_rpe(self, num_heads, nglo)
            self.register_buffer("relative_position_index", full_rpe_index(wx, wy))

    def relative_bias(self, npatch: int) -> torch.Tensor:
        """(heads, G + npatch, G + npatch) additive bias for ``npatch`` local tokens."""
        G, H = self.nglo, self.num_heads
        L0 = self.wx * self.wy
        local = self.local_relative_position_bias_table[self.relative_position_index.view(-1)]
        local = local.view(L0, L0, H).permute(2, 0, 1)
        if npatch != L0:
            local = _resize_bicubic(local.unsqueeze(0), (npatch, npatch), npatch / L0).squeeze(0)
        if G:
            top = torch.cat([self.g2g_relative_position_bias,
                             self.g2l_relative_position_bias[0].unsqueeze(-1).expand(-1, -1, npatch)], dim=-1)
            bottom = torch.cat([self.g2l_relative_position_bias[1].unsqueeze(1).expand(-1, npatch, -1), local], dim=-1)
            local = torch.cat([top, bottom], dim=1)
        return local

    def forward(self, x: torch.Tensor, nx: int, ny: int, return_attn: bool = False):
        """x (B, G + nx*ny, C) -> (B, N, C) [, probabilities (B, heads, N, N)]."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_bias(N - self.nglo).unsqueeze(0).to(q.dtype) if self.rpe else None
        out, probs = _attend(q, k, v, bias, self.scale, self.attn_drop, self.training, return_attn)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return (out, probs) if return_attn else out


# ------------------------------------------------------------------------------------------------
# blocks
# ------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Conv patch embedding (k = s = p) -> optional LayerNorm ``norm_embed`` -> prepend G fresh global
    tokens ``cls_token`` -> optional absolute 2-D position embedding -> dropout.

    The absolute embedding of position (x, y) is ``cat(x_pos_embed[x], y_pos_embed[y])`` on the
    nominal nx x ny grid (``cls_pos_embed`` for the global tokens). QUIRK (EsViT): it is resampled
    bicubically with scale factor ``sqrt((G + nx*ny) / (nx0*ny0))`` -- ``npatch`` counts the global
    tokens -- so with G >= 1 it is slightly resampled even at the nominal size.
    """

    def __init__(self, patch_size: int, nx: int, ny: int, in_chans: int = 3, embed_dim: int = 768,
                 nglo: int = 1, norm_embed: bool = True, drop_rate: float = 0.0, ape: bool = True):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm_embed = nn.LayerNorm(embed_dim, eps=LN_EPS) if norm_embed else None
        self.nx, self.ny, self.nglo = nx, ny, nglo
        if nglo >= 1:
            self.cls_token = nn.Parameter(torch.zeros(1, nglo, embed_dim))
            trunc_normal_(self.cls_token, std=0.02)
        else:
            self.cls_token = None
        self.ape = ape
        if ape:
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, nglo, embed_dim))
            self.x_pos_embed = nn.Parameter(torch.zeros(1, nx, embed_dim // 2))
            self.y_pos_embed = nn.Parameter(torch.zeros(1, ny, embed_dim // 2))
            trunc_normal_(self.cls_pos_embed, std=0.02)
            trunc_normal_(self.x_pos_embed, std=0.02)
            trunc_normal_(self.y_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

    def pos_embed_2d(self, nx: int, ny: int) -> torch.Tensor:
        """Absolute embedding of the nx x ny local tokens (1, nx*ny, D), resampled as EsViT does."""
        nx0, ny0 = self.nx, self.ny
        grid = torch.cat([self.x_pos_embed.unsqueeze(2).expand(-1, -1, ny0, -1),
                          self.y_pos_embed.unsqueeze(1).expand(-1, nx0, -1, -1)], dim=-1)  # (1, nx0, ny0, D)
        D = grid.shape[-1]
        npatch = self.nglo + nx * ny
        if npatch == nx0 * ny0 and (nx, ny) == (nx0, ny0):
            return grid.reshape(1, nx0 * ny0, D)
        scale = math.sqrt(npatch / (nx0 * ny0))
        grid = _resize_bicubic(grid.permute(0, 3, 1, 2), (nx, ny), scale)
        return grid.permute(0, 2, 3, 1).reshape(1, nx * ny, D)

    def forward(self, x: torch.Tensor):
        """(B, C_in, H, W) -> (tokens (B, G + nx*ny, D), nx, ny)."""
        x = self.proj(x)
        B, _, nx, ny = x.shape
        x = x.flatten(2).transpose(1, 2)
        if self.norm_embed is not None:
            x = self.norm_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        if self.ape:
            x = x + torch.cat([self.cls_pos_embed, self.pos_embed_2d(nx, ny)], dim=1)
        return self.pos_drop(x), nx, ny


class AttnBlock(nn.Module):
    """``x + drop_path(attn(norm(x), nx, ny))``."""

    def __init__(self, dim: int, attn: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
        return x + self.drop_path(self.attn(self.norm(x), nx, ny))


class MlpBlock(nn.Module):
    """``x + drop_path(mlp(norm(x)))`` with a 4x GELU MLP."""

    def __init__(self, dim: int, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden_features=4 * dim, act_layer=nn.GELU, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm(x)))


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
class MsViT(Backbone):
    """Multi-scale Vision Longformer backbone (EsViT ``MsViT``) without a classifier.

    ``forward(x)`` -> view feature (B, C): the first token of the final-normed last stage if that
    stage has global tokens and not ``avg_pool``, else the mean of all its normed tokens.
    ``forward_dense(x)`` -> (view feature, region tokens (B, L, C)) (EsViT's dense output).
    ``forward_tokens(x)`` -> all final-normed last-stage tokens (B, G + L, C); ``forward_features(x)`` ->
    ``Features(view feature, region tokens)``.
    ``forward_return_n_last_blocks(x, n, ..., depths)`` / ``get_last_selfattention(x)`` as EsViT;
    ``get_all_selfattention(x)`` -> every attention block's dense probabilities, in order.

    ``img_size`` is the nominal size that fixes the absolute pos-embed and full-attention bias tables
    (EsViT: ``TRAIN.IMAGE_SIZE[0]``); other sizes are handled by resampling them.
    Not implemented (raise): ``r1`` (add_pooled), ``with_se`` 'SE'/'ECA', attention types other than
    longformerhand/longformerauto/full. ``share_kv`` / ``pool_method`` only matter for those.
    """

    def __init__(self, arch: str = VIL_2262_ARCH, img_size: int | Sequence[int] = 224, in_chans: int = 3,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_embed: bool = False,
                 sharew: bool = False, only_glo: bool = False, share_kv: bool = False,
                 attn_type: str = "longformerhand", sw_exact: int = 0, mode: int = 0, avg_pool: bool = False,
                 ln_eps: float = 1e-6, pool_method: Optional[str] = None, with_se=None,
                 se_mlp_ratio: float = 0.625, se_mlp_balance: bool = False):
        super().__init__()
        if isinstance(img_size, (list, tuple)):
            img_size = img_size[0]
        if attn_type not in _SLIDING_TYPES + ("full",):
            raise NotImplementedError(f"attn_type {attn_type!r} is not implemented "
                                      f"(available: {', '.join(_SLIDING_TYPES + ('full',))})")
        if with_se not in (None, False, "None", "none", ""):
            raise NotImplementedError(f"with_se={with_se!r} (SE/ECA layers) is not implemented")
        self.layer_cfgs = parse_arch(arch)
        if any(cfg["r"] for cfg in self.layer_cfgs):
            raise NotImplementedError("r1 (add_pooled window keys) is not implemented")
        self.arch = arch
        self.num_layers = len(self.layer_cfgs)
        self.depth = sum(cfg["n"] for cfg in self.layer_cfgs)
        self.depths = [cfg["n"] for cfg in self.layer_cfgs]
        self.out_planes = self.embed_dim = self.num_features = self.layer_cfgs[-1]["d"]
        self.Nglos = [cfg["g"] for cfg in self.layer_cfgs]
        self.avg_pool = avg_pool
        self.ln_eps = ln_eps  # QUIRK: stored only; every LayerNorm uses eps 1e-6 as in the original
        self.attn_type, self.sw_exact, self.share_kv, self.pool_method = attn_type, sw_exact, share_kv, pool_method
        self.drop_path_rate = drop_path_rate

        dprs = torch.linspace(0, drop_path_rate, self.depth).split(self.depths)
        nx = ny = img_size
        sliding = attn_type in _SLIDING_TYPES
        in_dim = in_chans
        for i, (cfg, stage_dpr) in enumerate(zip(self.layer_cfgs, dprs), start=1):
            nx, ny = nx // cfg["p"], ny // cfg["p"]
            dim, heads, nglo, rpe = cfg["d"], cfg["h"], cfg["g"], not cfg["a"]
            # QUIRK: the original overwrites its shared attention type with 'full' at an s0 stage, so
            # every later stage is full attention too, whatever its s field says.
            sliding = sliding and cfg["s"] == 1
            layers: list[nn.Module] = [PatchEmbed(cfg["p"], nx, ny, in_dim, dim, nglo, norm_embed, drop_rate,
                                                  ape=bool(cfg["a"]))]
            for dpr in stage_dpr.tolist():
                if sliding:
                    attn = SlidingChunkAttention(dim, heads, qkv_bias, qk_scale, attn_drop_rate, drop_rate,
                                                 w=cfg["f"], sharew=sharew, nglo=nglo, only_glo=only_glo,
                                                 exact=sw_exact, rpe=rpe, mode=mode)
                else:
                    attn = FullAttention(dim, heads, qkv_bias, qk_scale, attn_drop_rate, drop_rate, rpe=rpe,
                                         wx=nx, wy=ny, nglo=nglo)
                layers += [AttnBlock(dim, attn, dpr), MlpBlock(dim, drop_rate, dpr)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            in_dim = dim
        if self.num_layers == 3:
            self.layer4 = None
        self.norm = nn.LayerNorm(self.out_planes, eps=LN_EPS)
        self.head = nn.Identity()  # ssvit's EsViT attaches ``head`` / ``head_dense`` here
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i}") for i in range(1, self.num_layers + 1)]

    # --- forward ----------------------------------------------------------------------------
    def _forward_tokens(self, x: torch.Tensor, collect: bool = False, last_attn: bool = False,
                        attns: Optional[list] = None):
        """Run the stages on images (B, 3, H, W).

        Returns the last stage's tokens before the final norm (B, G + L, C) and, with ``collect``, the
        per-block tokens of every stage (list of lists, taken after each MLP block). With
        ``last_attn`` stops at the last attention block and returns its probabilities instead.
        ``attns`` (a list) receives every attention block's dense probabilities (B, heads, N, N).
        """
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        feats: list[list[torch.Tensor]] = []
        nx = ny = 0
        stages = self.stages
        for i, layer in enumerate(stages):
            if i > 0:  # drop the previous stage's global tokens, back to a (B, C, nx, ny) map
                x = x[:, self.Nglos[i - 1]:].transpose(1, 2).reshape(x.shape[0], -1, nx, ny)
            x, nx, ny = layer[0](x)
            stage_feats = []
            blocks = list(layer)[1:]
            for j, blk in enumerate(blocks):
                if last_attn and i == len(stages) - 1 and j == len(blocks) - 2:
                    return blk.attn(blk.norm(x), nx, ny, return_attn=True)[1], feats
                if attns is not None and isinstance(blk, AttnBlock):
                    attns.append(blk.attn(blk.norm(x), nx, ny, return_attn=True)[1])
                x = blk(x, nx, ny)
                if collect and isinstance(blk, MlpBlock):
                    stage_feats.append(x)
            feats.append(stage_feats)
        return x, feats

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed last-stage tokens (B, G_last + L, C)."""
        return self.norm(self._forward_tokens(x)[0])

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.Nglos[-1] > 0 and not self.avg_pool:
            return x[:, 0], x[:, 1:]
        return x.mean(dim=1), x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """View-level feature (B, C) (EsViT ``forward_features`` without dense prediction)."""
        return self._pool(self.forward_tokens(x))[0]

    def forward_features(self, x: torch.Tensor) -> Features:
        """``Features(view feature (B, C), region tokens (B, L, C))``; vil_2262: L = 49 at 224 px, 9 at 96 px."""
        return Features(*self._pool(self.forward_tokens(x)))

    def forward_return_n_last_blocks(self, x: torch.Tensor, n: int = 1, return_patch_avgpool: bool = False,
                                     depths: Optional[Sequence[int]] = None, depth: Optional[Sequence[int]] = None
                                     ) -> torch.Tensor:
        """Concatenated pooled features of the last ``n`` blocks (B, sum of their dims), as EsViT.

        Each block's tokens are pooled as its stage's view feature (first token if the stage has global
        tokens and not ``avg_pool``, else the token mean); only the last stage's are final-normed.
        ``depths`` (EsViT's ``depth``) is the blocks-per-stage list used to locate the first block;
        empty / None means the model's own (the original fails on an empty list).
        ``return_patch_avgpool`` is accepted and unused, as in the original.
        """
        depths = list(depths or depth or self.depths)
        start = sum(depths) - n
        if n < 1 or start < 0:
            raise ValueError(f"n={n} must be in [1, {sum(depths)}]")
        cum, start_stage, start_blk = 0, None, 0
        for i, d in enumerate(depths):
            if cum <= start < cum + d:
                start_stage, start_blk = i, start - cum
            cum += d
        _, feats = self._forward_tokens(x, collect=True)
        out = []
        for i, stage_feats in enumerate(feats):
            if i < start_stage:
                continue
            for t in stage_feats[start_blk if i == start_stage else 0:]:
                if i == self.num_layers - 1:
                    t = self.norm(t)
                out.append(t[:, 0] if self.Nglos[i] > 0 and not self.avg_pool else t.mean(dim=1))
        return torch.cat(out, dim=-1)

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Post-softmax probabilities of the last attention block (B, heads, N, N), N = G + L of the
        last stage (vil_2262: (B, 24, 49, 49) at 224 px). A sliding-chunk block's probabilities are
        scattered into the dense matrix (zeros outside each query's window)."""
        return self._forward_tokens(x, last_attn=True)[0]

    def get_all_selfattention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Post-softmax probabilities of every attention block, in order: each (B, heads, N, N) with
        N = G + L of its stage (dense, as ``get_last_selfattention``). The probabilities are computed
        beside the block's own forward, so with ``mode > 0`` in training mode the neighbour drawn for
        a map can differ from the one the forward used; call it in eval mode."""
        attns: list[torch.Tensor] = []
        self._forward_tokens(x, attns=attns)
        return attns

    def reset_vil_mode(self, mode: int):
        """Set the neighbour mode of every sliding-chunk attention (EsViT ``reset_vil_mode``)."""
        for m in self.modules():
            if isinstance(m, SlidingChunkAttention):
                m.mode = mode

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The original's set (keyword-like substrings, not full parameter names)."""
        return {"pos_embed", "cls_token", "norm.weight", "norm.bias", "norm_embed", "head.bias", "relative_position"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return set()  # the original defines none


# ------------------------------------------------------------------------------------------------
# config mapping and factories
# ------------------------------------------------------------------------------------------------
_SPEC_KEYS = {"DROP": "drop_rate", "DROP_PATH": "drop_path_rate", "NORM_EMBED": "norm_embed", "AVG_POOL": "avg_pool"}
_MSVIT_KEYS = {"ARCH": "arch", "SHARE_W": "sharew", "ATTN_TYPE": "attn_type", "SHARE_KV": "share_kv",
               "ONLY_GLOBAL": "only_glo", "SW_EXACT": "sw_exact", "LN_EPS": "ln_eps", "MODE": "mode",
               "POOL_METHOD": "pool_method", "WITH_SE": "with_se", "SE_MLP_RATIO": "se_mlp_ratio",
               "SE_MLP_BALANCE": "se_mlp_balance"}


def _none_string(v):
    return None if isinstance(v, str) and v.strip().lower() in ("none", "null", "") else v


def spec_to_kwargs(spec: dict) -> dict:
    """Map EsViT's ``MODEL.SPEC`` (``DROP``, ``DROP_PATH``, ``NORM_EMBED``, ``AVG_POOL`` and the
    ``MSVIT`` sub-dict) to :class:`MsViT` kwargs, as EsViT's ``get_cls_model`` does (``img_size``
    comes from ``TRAIN.IMAGE_SIZE[0]``; the teacher is built with ``drop_path_rate=0``: both are the
    caller's business). ``MSVIT`` keys may also be given at the top level. QUIRK: ``VIL_MODE_SWITCH``
    is ignored, as EsViT does (MODE is never reset during training). Unknown keys are ignored.
    """
    spec = dict(spec or {})
    msvit = dict(spec.get("MSVIT") or {})
    out = {}
    for key, name in _SPEC_KEYS.items():
        if key in spec:
            out[name] = spec[key]
    for key, name in _MSVIT_KEYS.items():
        if key in msvit:
            out[name] = msvit[key]
        elif key in spec:
            out[name] = spec[key]
    for name in ("pool_method", "with_se"):  # YAML 'None' is a string
        if name in out:
            out[name] = _none_string(out[name])
    for name, cast in (("ln_eps", float), ("drop_rate", float), ("drop_path_rate", float), ("sw_exact", int),
                       ("mode", int), ("se_mlp_ratio", float)):
        if name in out:
            out[name] = cast(out[name])  # PyYAML reads '1e-06' as a string
    return out


# vil_small/base.yaml MODEL.SPEC: EsViT trains every ViL with it (README overrides ARCH / MODE only).
_ESVIT_VIL_DEFAULTS = dict(drop_rate=0.0, norm_embed=True, avg_pool=False, sharew=True, attn_type="longformerhand",
                           share_kv=True, only_glo=False, sw_exact=0, mode=0, ln_eps=1e-6)
_MSVIT_ARGS = frozenset(inspect.signature(MsViT.__init__).parameters) - {"self"}


def _build(arch: str, img_size=224, drop_path_rate: float = 0.1, in_chans: int = 3, **kwargs) -> MsViT:
    cfg = dict(_ESVIT_VIL_DEFAULTS)
    cfg.update({k: v for k, v in kwargs.items() if k in _MSVIT_ARGS})  # e.g. patch_size is dropped
    cfg.update(arch=arch, img_size=img_size, drop_path_rate=drop_path_rate, in_chans=in_chans)
    return MsViT(**cfg)


def _fixed_arch(name: str, arch: str, kwargs: dict) -> str:
    given = kwargs.pop("arch", None)
    if given is not None and given.replace(" ", "") != arch:
        raise ValueError(f"{name} has the fixed arch {arch!r}; got arch={given!r} -- use 'vil' for other archs")
    return arch


@register_backbone(aliases=("msvit",))
def vil(arch: str = VIL_SMALL_ARCH, img_size=224, drop_path_rate: float = 0.1, in_chans: int = 3, **kwargs):
    """Any ViL arch string (EsViT ``--arch vil`` + ``MODEL.SPEC.MSVIT.ARCH``; default: the
    vil_small/base.yaml arch) with EsViT's vil_small/base.yaml settings unless overridden."""
    return _build(arch, img_size, drop_path_rate, in_chans, **kwargs)


@register_backbone
def vil_2262(img_size=224, drop_path_rate: float = 0.1, in_chans: int = 3, **kwargs):
    """EsViT README ViL (stages 2-2-6-2, dims 96-768, relative bias, 27.57 M params), mode 0 by default
    (EsViT's recommended command passes ``MODEL.SPEC.MSVIT.MODE 1``: ``mode=1``)."""
    arch = _fixed_arch("vil_2262", VIL_2262_ARCH, kwargs)
    return _build(arch, img_size, drop_path_rate, in_chans, **kwargs)


@register_backbone(aliases=("vil_1281",))
def vil_small(img_size=224, drop_path_rate: float = 0.1, in_chans: int = 3, **kwargs):
    """ViL-Small (vil_small/base.yaml default arch: stages 1-2-8-1, absolute pos-embed)."""
    arch = _fixed_arch("vil_small", VIL_SMALL_ARCH, kwargs)
    return _build(arch, img_size, drop_path_rate, in_chans, **kwargs)


@register_backbone
def vil_pico(img_size=224, drop_path_rate: float = 0.1, in_chans: int = 3, **kwargs):
    """CPU-sized ViL for tests (dims 16-64, one block per stage, vil_2262's layout otherwise)."""
    arch = _fixed_arch("vil_pico", VIL_PICO_ARCH, kwargs)
    return _build(arch, img_size, drop_path_rate, in_chans, **kwargs)
