"""RelViT (Camporese et al. 2022; guglielmocamporese/relvit ``models/relvit.py``,
``models/backbones/vit.py``): a ViT whose patch tokens predict, for every ordered pair, their
spatial relation (9 classes), plus optional absolute positions, distances, angles and a supervised
head. Original parameter names and state-dict keys (``backbone.*``, ``rel_head.heads.i.{q,k,v}_lin``,
``abs_pos_head.*``, ``dist_head``, ``angle_head``, ``clf_head``); a plain ``nn.Module`` (the original
is a Lightning module).

* ``attention_scores(q, k, v, mask)``: ``q k^T / sqrt(d_k)`` (B, T_q, T_k), masked entries -inf, no softmax.
* ``HeadScores(h_dim, head_out_dim)``: bias-free ``q_lin`` / ``k_lin`` / ``v_lin`` (``v_lin`` unused).
* ``MultiHeadAttentionScores(h_dim, num_heads)``: ``num_heads`` heads of width ``h_dim // num_heads``
  stacked -> (B, num_heads, N, N); ``logits[b, c, i, j]`` scores "patch i stands in relation c to j".
* ``RelViTViT``: the original's backbone -- DINO's ViT with ``use_positional_embeddings`` (False: no
  position embedding nor its dropout; the parameter exists untrained), ``learn_positional_embeddings``
  (False: fixed sinusoids), ``proj_dropout`` on the patch embeddings, ``use_clf_token`` and the
  ``'diagonal'`` / ``'diagonal_clf_row'`` attention masks; ``forward(x, mask)`` ->
  ``{'z': CLS, 'z_patches': patch tokens}`` after the final norm.
"""
from __future__ import annotations

import argparse
import math
from typing import Optional

import torch
import torch.nn as nn

from .vision_transformer import VisionTransformer


def attention_scores(q: torch.Tensor, k: torch.Tensor, v: Optional[torch.Tensor] = None,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    B = q.shape[0]
    att = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(k.shape[2])
    if mask is not None:
        mask = mask.unsqueeze(0).repeat(B, 1, 1)
        att = torch.where(mask > 0.0, att, -math.inf * torch.ones_like(att))
    return att


class HeadScores(nn.Module):
    def __init__(self, h_dim: int, head_out_dim: int):
        super().__init__()
        self.q_lin = nn.Linear(h_dim, head_out_dim, bias=False)
        self.k_lin = nn.Linear(h_dim, head_out_dim, bias=False)
        self.v_lin = nn.Linear(h_dim, head_out_dim, bias=False)

    def forward(self, q, k=None, v=None, mask=None):
        k = q if k is None else k
        v = k if v is None else v
        return attention_scores(self.q_lin(q), self.k_lin(k), self.v_lin(v), mask=mask)


class MultiHeadAttentionScores(nn.Module):
    def __init__(self, h_dim: int, num_heads: int):
        super().__init__()
        self.h_dim, self.num_heads = h_dim, num_heads
        self.heads = nn.ModuleList([HeadScores(h_dim, h_dim // num_heads) for _ in range(num_heads)])

    def forward(self, q, k=None, v=None, mask=None):
        return torch.stack([head(q, k, v, mask=mask) for head in self.heads], 1)


def sinusoidal_positions(T: int, D: int) -> torch.Tensor:
    """The original's fixed encoding (1, T, D): ``sin`` / ``cos`` of ``t / 10000^(2i / D)`` interleaved
    by its reshape."""
    x, y = torch.meshgrid(torch.arange(T), torch.arange(D // 2), indexing="ij")
    sin = torch.sin(x / 10000 ** (2 * y / D))
    cos = torch.cos(x / 10000 ** (2 * y / D))
    return torch.cat([sin, cos], 0).T.reshape(D, T).T.unsqueeze(0).to(torch.float32)


class RelViTViT(VisionTransformer):
    """RelViT's ViT backbone (see the module doc); DINO's position-embedding interpolation (+0.1)."""

    def __init__(self, *args, use_positional_embeddings: bool = True, learn_positional_embeddings: bool = True,
                 proj_dropout: float = 0.0, use_clf_token: bool = True, task: str = "downstream",
                 side_megapatches: int = 5, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_positional_embeddings = use_positional_embeddings
        self.use_clf_token = use_clf_token
        self.proj_dropout = nn.Dropout(proj_dropout) if proj_dropout > 0 else nn.Identity()
        if not learn_positional_embeddings:
            self.pos_embed = nn.Parameter(sinusoidal_positions(self.pos_embed.shape[1], self.embed_dim),
                                          requires_grad=False)

    def prepare_tokens(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, h, w, D)
        B, h, w, D = x.shape
        x = self.proj_dropout(x.reshape(B, h * w, D))
        if self.use_clf_token:
            x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        if self.use_positional_embeddings:
            from .vision_transformer import interpolate_pos_encoding
            pos = interpolate_pos_encoding(self.pos_embed, h, w, 1)
            x = self.pos_drop(x + (pos if self.use_clf_token else pos[:, 1:]))
        return x

    @staticmethod
    def attention_mask(kind: Optional[str], T: int, device) -> Optional[torch.Tensor]:
        """``'diagonal'``: each token attends to itself only; ``'diagonal_clf_row'``: the CLS token
        attends to all. Boolean (1, 1, T, T), True = attend."""
        if not kind:
            return None
        m = torch.eye(T, dtype=torch.bool, device=device)
        if kind == "diagonal_clf_row":
            m[0] = True
        elif kind != "diagonal":
            raise ValueError(f"attention mask must be '', 'diagonal' or 'diagonal_clf_row', got {kind!r}")
        return m[None, None]

    def forward(self, x: torch.Tensor, mask: Optional[str] = None) -> dict:
        x = self.prepare_tokens(x)
        attn_mask = self.attention_mask(mask, x.shape[1], x.device)
        for blk in self.blocks:
            x = blk(x, attn_mask=attn_mask)
        x = self.norm(x)
        if self.use_clf_token:
            return {"z": x[:, 0], "z_patches": x[:, 1:]}
        return {"z_patches": x}


_SIZES = {"pico": (96, 4, 3), "tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


def relvit_backbone(model_size: str, **kwargs) -> RelViTViT:
    if model_size not in _SIZES:
        raise ValueError(f"--model_size must be one of {', '.join(_SIZES)}, got {model_size!r}")
    dim, depth, heads = _SIZES[model_size]
    return RelViTViT(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4, qkv_bias=True, **kwargs)


class RelViT(nn.Module):
    """``RelViT(args, num_classes, ...)``: ``forward(x)`` -> dict with ``rel`` (B, 9, N, N), ``dist`` /
    ``angle`` (B, 1, N, N), ``abs_pos`` (B, N, N) (classes first, as ``F.cross_entropy`` wants) and
    ``clf`` (B, num_classes) as enabled. ``args`` is the original's namespace (``img_height``,
    ``patch_size``, ``model_size``, ``attn_drop``, ``drop_path_rate``, ``task``, ``side_megapatches``,
    ``mega_patches``, ``attn_mask``, ``add_clf_to_patches``, ``num_classes``, ``backbone``)."""

    def __init__(self, args: argparse.Namespace, num_classes: int, num_rel_classes: int = 9,
                 use_relations: bool = False, use_positional_emb: bool = True, use_supervision: bool = True,
                 patch_size: int = 32, dropout: float = 0.1, freeze_fet_enc: bool = False,
                 use_distances: bool = False, use_angles: bool = False, use_abs_positions: bool = False,
                 proj_dropout: float = 0.0, use_clf_token: bool = True):
        super().__init__()
        self.args, self.num_classes = args, num_classes
        self.use_supervision, self.use_relations = use_supervision, use_relations
        self.use_distances, self.use_angles, self.use_abs_positions = use_distances, use_angles, use_abs_positions
        self.use_positional_emb, self.patch_size, self.dropout = use_positional_emb, patch_size, dropout
        self.proj_dropout, self.freeze_fet_enc, self.use_clf_token = proj_dropout, freeze_fet_enc, use_clf_token
        self.img_height = args.side_megapatches * patch_size if args.mega_patches else args.img_height
        self.num_patches = (self.img_height // patch_size) ** 2
        self.kind = getattr(args, "backbone", "vit")
        if self.kind == "vit":
            self.backbone = relvit_backbone(
                args.model_size, img_size=args.img_height, patch_size=args.patch_size, attn_drop_rate=args.attn_drop,
                use_positional_embeddings=use_positional_emb, drop_path_rate=args.drop_path_rate,
                proj_dropout=proj_dropout, drop_rate=dropout, use_clf_token=use_clf_token, task=args.task,
                side_megapatches=args.side_megapatches)
            D = self.backbone.embed_dim
        elif self.kind == "swin":
            # the patch tokens are Swin's final-norm last-stage tokens (stride 32: one per 32-px patch)
            from .registry import create_backbone
            self.backbone = create_backbone(f"swin_{args.model_size}", drop_path_rate=args.drop_path_rate,
                                            img_size=args.img_height)
            D = self.backbone.num_features
        else:
            raise ValueError(f"backbone {self.kind!r}: vit or swin (timm has no T2T-ViT)")

        if use_relations:
            self.rel_head = MultiHeadAttentionScores(D, num_rel_classes)
        if use_supervision:
            # QUIRK kept: sized by args.num_classes, not by the num_classes argument
            self.clf_head = nn.Linear(D if use_clf_token else D * self.num_patches, args.num_classes)
        if use_distances:
            self.dist_head = MultiHeadAttentionScores(D, 1)
        if use_angles:
            self.angle_head = MultiHeadAttentionScores(D, 1)
        if use_abs_positions:
            self.abs_pos_head = nn.Linear(D, self.num_patches)
        if freeze_fet_enc:
            for p in self.backbone.parameters():
                p.requires_grad = False

    def forward(self, x: torch.Tensor) -> dict:
        out = {}
        mask = self.args.attn_mask if self.args.attn_mask else None
        if self.kind == "swin":
            f = self.backbone.forward_features(x)
            feats = {"z": f.cls, "z_patches": f.patch_tokens}  # Swin's classifier reads the average-pooled tokens
        else:
            feats = self.backbone(x, mask=mask)
        z_patches = feats["z_patches"] + feats["z"].unsqueeze(1) if self.args.add_clf_to_patches else feats["z_patches"]
        if self.use_relations:
            out["rel"] = self.rel_head(z_patches)
        if self.use_distances:
            out["dist"] = self.dist_head(z_patches)
        if self.use_angles:
            out["angle"] = self.angle_head(z_patches)
        if self.use_abs_positions:
            out["abs_pos"] = self.abs_pos_head(z_patches).transpose(1, 2)
        if self.use_supervision:
            out["clf"] = self.clf_head(feats["z"]) if self.use_clf_token else self.clf_head(z_patches.flatten(1))
        return out
