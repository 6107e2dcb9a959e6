"""SiT-v1's ViT (Atito et al. 2021, "SiT: Self-supervised vIsion Transformer"; Sara-Ahmed/SiT at
1aacd6a, ``vision_transformer_SiT.py``), with the original state-dict keys, at any ViT size.

``VisionTransformer_SiT``: two learned tokens before the patch tokens -- ``rot_token`` (index 0) and
``contrastive_token`` (index 1) --, ``pos_embed`` (1, N + 2, D) added without interpolation (the
input size is strict, as the original's ``PatchEmbed``), DINO/timm blocks (``blocks.i.*``), final
``norm`` (LayerNorm eps 1e-6).

* ``training_mode='SSL'``: ``rot_head`` Linear(F, 4) on token 0, ``contrastive_head`` Linear(F, 512)
  on token 1, ``convTrans`` ConvTranspose2d(D, in_chans, patch, stride patch) on the patch-token map
  (B, D, h, w) -> (B, in_chans, H, W), and the learned uncertainty scalars ``rot_w``,
  ``contrastive_w``, ``recons_w`` (``[1.0]`` each). ``forward`` returns the original six outputs
  ``(x_rot (B, 4), x_contrastive (B, 512), x_rec (B, C, H, W), rot_w, contrastive_w, recons_w)``.
* ``training_mode='finetune'``: both heads Linear(F, num_classes); ``forward`` -> ``(x_rot, x_contrastive)``
  (SiT's prediction is their mean).
* ``training_mode='eval'`` (ssvit): no heads; ``forward`` -> the two normed SSL tokens concatenated
  (B, 2D): the frozen feature for k-NN / linear probing (SiT's own evaluations use both tokens).

``representation_size`` R adds the "2-layer MLP" pre-logits ``pre_logits_rot`` /
``pre_logits_contrastive`` = Linear(D, R) + Tanh (keys ``*.fc.*``) and makes ``num_features = R``.
``forward_tokens(x)`` returns all normed tokens (B, 2 + N, D), as the original's ``forward_features``.
``checkpoint_filter(sd)`` adapts an SSL checkpoint to this model (the original's finetuning load):
heads whose shape differs (or that this mode lacks) are dropped, ``pos_embed`` is resized keeping
the two extra tokens (bicubic, ``size=``, ``align_corners=False``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from .backbone import Backbone, Features
from .registry import register_backbone

SSL_ONLY_KEYS = ("convTrans.", "rot_w", "contrastive_w", "recons_w")


class VisionTransformer_SiT(Backbone):  # noqa: N801  (the original's name)
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, representation_size: Optional[int] = None,
                 distilled: bool = False, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., embed_layer=None, norm_layer=None, act_layer=None,
                 weight_init: str = "", training_mode: str = "SSL"):
        super().__init__()
        if training_mode not in ("SSL", "finetune", "eval"):
            raise ValueError(f"training_mode must be SSL, finetune or eval, got {training_mode!r}")
        if qk_scale is not None or distilled:
            raise ValueError("qk_scale and distilled are not used by SiT (the original ignores distilled too)")
        if isinstance(img_size, (list, tuple)):
            img_size = img_size[0]
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.training_mode = training_mode
        self.num_tokens = self.num_prefix_tokens = 2
        self.patch_size = patch_size
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.patch_embed = (embed_layer or PatchEmbed)(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                                       embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.rot_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.contrastive_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]  # (cpu: meta-safe)
        self.blocks = nn.Sequential(*[
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer, act_layer=act_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        if representation_size:
            self.num_features = representation_size
            self.pre_logits_rot = nn.Sequential(OrderedDict([("fc", nn.Linear(embed_dim, representation_size)),
                                                             ("act", nn.Tanh())]))
            self.pre_logits_contrastive = nn.Sequential(OrderedDict([
                ("fc", nn.Linear(embed_dim, representation_size)), ("act", nn.Tanh())]))
        else:
            self.pre_logits_rot = nn.Identity()
            self.pre_logits_contrastive = nn.Identity()
        if training_mode == "SSL":
            self.rot_head = nn.Linear(self.num_features, 4)
            self.contrastive_head = nn.Linear(self.num_features, 512)
            self.convTrans = nn.ConvTranspose2d(embed_dim, in_chans, kernel_size=(patch_size, patch_size),
                                                stride=(patch_size, patch_size))
            self.rot_w = nn.Parameter(torch.tensor([1.0]))
            self.contrastive_w = nn.Parameter(torch.tensor([1.0]))
            self.recons_w = nn.Parameter(torch.tensor([1.0]))
        elif training_mode == "finetune":
            self.rot_head = nn.Linear(self.num_features, num_classes)
            self.contrastive_head = nn.Linear(self.num_features, num_classes)
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.rot_token, std=.02)
        trunc_normal_(self.contrastive_token, std=.02)
        self.apply(self._init_vit_weights)

    @staticmethod
    def _init_vit_weights(m: nn.Module) -> None:
        _trunc_normal_linear(m)
        if isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "rot_token", "contrastive_token"}

    has_last_blocks = False

    def forward_features(self, x: torch.Tensor) -> Features:
        """``Features(rotation token (B, D), patch tokens (B, N, D))``, final-normed (the contrastive token
        is ``forward_tokens(x)[:, 1]``)."""
        x = self.forward_tokens(x)
        return Features(x[:, 0], x[:, 2:])

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> all final-normed tokens (B, 2 + N, D)."""
        B = x.shape[0]
        x = self.patch_embed(x)
        x = torch.cat((self.rot_token.expand(B, -1, -1), self.contrastive_token.expand(B, -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.blocks(x)
        return self.norm(x)

    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, 2 + N, D) -> image (B, C, H, W) through ``convTrans``."""
        x_rec = tokens[:, 2:].transpose(1, 2)
        side = int(math.sqrt(x_rec.size(2)))
        return self.convTrans(x_rec.unflatten(2, (side, side)))

    def forward(self, x: torch.Tensor):
        x = self.forward_tokens(x)
        if self.training_mode == "eval":
            return torch.cat([x[:, 0], x[:, 1]], dim=-1)
        x_rot = self.rot_head(self.pre_logits_rot(x[:, 0]))
        x_contrastive = self.contrastive_head(self.pre_logits_contrastive(x[:, 1]))
        if self.training_mode == "finetune":
            return x_rot, x_contrastive
        return x_rot, x_contrastive, self.reconstruct(x), self.rot_w, self.contrastive_w, self.recons_w

    # ---- loading
    def checkpoint_filter(self, sd: dict) -> dict:
        """An SiT checkpoint's state dict made to fit this model (see the module doc)."""
        own = self.state_dict()
        out = {}
        for k, v in sd.items():
            if k not in own and k.startswith(("rot_head.", "contrastive_head.", "pre_logits_") + SSL_ONLY_KEYS):
                continue  # e.g. an SSL checkpoint evaluated without heads
            if k.startswith(("rot_head.", "contrastive_head.")) and v.shape != own[k].shape:
                print(f"Removing key {k} from pretrained checkpoint")
                continue
            out[k] = v
        pe = out.get("pos_embed")
        if pe is not None and pe.shape != own["pos_embed"].shape and pe.shape[-1] == own["pos_embed"].shape[-1]:
            n_extra = self.num_tokens
            orig = int((pe.shape[-2] - n_extra) ** 0.5)
            new = int(self.patch_embed.num_patches ** 0.5)
            grid = pe[:, n_extra:].reshape(-1, orig, orig, pe.shape[-1]).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
            out["pos_embed"] = torch.cat((pe[:, :n_extra], grid.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)
        return out


_SIZES = {"pico": (96, 4, 3), "mini": (192, 6, 3), "tiny": (192, 12, 3), "small": (384, 12, 6),
          "base": (768, 12, 12)}


def _sit(size: str, patch_size: int = 16, num_classes: int = 0, training_mode: Optional[str] = None, **kwargs):
    dim, depth, heads = _SIZES[size]
    if training_mode is None:  # ssvit's registry convention: num_classes 0 = the frozen feature
        training_mode = "eval" if num_classes == 0 else "finetune"
    kwargs.pop("num_prefix_tokens", None)
    return VisionTransformer_SiT(patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4,
                                 qkv_bias=True, num_classes=num_classes, training_mode=training_mode, **kwargs)


@register_backbone
def sit_pico(patch_size: int = 4, **kwargs):
    """CPU-sized SiT-v1 ViT (D=96, 4 blocks, 3 heads) for tests and 28-px images."""
    return _sit("pico", patch_size, **kwargs)


@register_backbone
def sit_mini(patch_size: int = 4, **kwargs):
    """SiT-v1 ViT at the default job's size (D=192, 6 blocks, 3 heads)."""
    return _sit("mini", patch_size, **kwargs)


@register_backbone
def sit_tiny(patch_size: int = 16, **kwargs):
    return _sit("tiny", patch_size, **kwargs)


@register_backbone
def sit_small(patch_size: int = 16, **kwargs):
    return _sit("small", patch_size, **kwargs)


@register_backbone(aliases=("SiT_base_patch16_224",))
def sit_base(patch_size: int = 16, **kwargs):
    """The original's only size: ViT-B/16 (``SiT_base_patch16_224``)."""
    return _sit("base", patch_size, **kwargs)


# =========================================================================== SiT-v2 (HEAD) heads
class CLSHead(nn.Module):
    """SiT-v2's projection head (``vision_transformer.py``): ``nlayers`` 1 is one Linear (keys
    ``mlp.weight`` / ``mlp.bias``); otherwise Linear(in, hidden) -> BN -> ReLU, then ``nlayers - 2``
    x (Linear(hidden, hidden) -> BN -> GELU) (QUIRK kept: ReLU first, GELU after), then
    Linear(hidden, bottleneck) -> BN(affine=False). Linear weights trunc-normal 0.02, biases 0.
    (B, in_dim) -> (B, bottleneck_dim)."""

    def __init__(self, in_dim: int, bottleneck_dim: int, nlayers: int = 3, hidden_dim: int = 4096):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU()]
            layers += [nn.Linear(hidden_dim, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim, affine=False)]
            self.mlp = nn.Sequential(*layers)
        self.apply(_trunc_normal_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class RECHead(nn.Module):
    """SiT-v2's reconstruction head: 3 x (Linear(D, D) + GELU) on the patch tokens (B, N, D), then
    ``convTrans`` ConvTranspose2d(D, in_chans, patch, stride patch) on the (B, D, sqrt N, sqrt N) map
    -> (B, in_chans, H, W)."""

    def __init__(self, in_dim: int, in_chans: int = 3, patch_size: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), nn.GELU(),
                                 nn.Linear(in_dim, in_dim), nn.GELU())
        self.apply(_trunc_normal_linear)
        self.convTrans = nn.ConvTranspose2d(in_dim, in_chans, kernel_size=(patch_size, patch_size),
                                            stride=(patch_size, patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_rec = self.mlp(x).transpose(1, 2)
        side = int(math.sqrt(x_rec.size(2)))
        return self.convTrans(x_rec.unflatten(2, (side, side)))


def _trunc_normal_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)


class FullPipline(nn.Module):  # the original's spelling
    """SiT-v2's network: ``backbone`` (a ViT returning all normed tokens), ``head`` (``CLSHead`` on the
    CLS token) and ``head_recons`` (``RECHead`` on the patch tokens). ``forward(x, recons=True)`` ->
    ``(head(cls) (B, K), reconstruction (B, C, H, W) or None)``."""

    def __init__(self, backbone: nn.Module, head: nn.Module, head_recons: nn.Module):
        super().__init__()
        if hasattr(backbone, "head"):
            backbone.head = nn.Identity()
        self.backbone, self.head, self.head_recons = backbone, head, head_recons

    def forward(self, x: torch.Tensor, recons: bool = True):
        out = self.backbone(x, return_all_tokens=True)
        prefix = getattr(self.backbone, "num_prefix_tokens", 1)
        if recons:
            return self.head(out[:, 0]), self.head_recons(out[:, prefix:])
        return self.head(out[:, 0]), None
