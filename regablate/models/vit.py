"""Vision Transformer (Dosovitskiy et al. 2021) for small images, regularised through ModelSpec.

Patches of p×p pixels are embedded by a stride-p conv (one Linear per patch), a learned class
token is prepended (pool=cls; pool=mean averages the patch tokens instead and has no class
token), learned position embeddings are added, then `depth` pre-norm blocks, a final LayerNorm
and the classifier head. With the stack's layers (timm's placement, timm/models/vision_transformer.py):

    x = embed_drop(patches + pos)                                   reg.dropout.embed
    x = x + droppath_l(proj_drop(attn_proj(attn_drop(softmax(q kᵀ/√d)) v)))   reg.dropout.attn, .proj
    x = x + droppath_l(proj_drop(fc2(proj_drop(gelu(fc1(norm2(x)))))))       reg.dropout.proj
    y = head(norm(x)[cls] or mean of the patch tokens)              reg.dropout.p (the MLP head)

(q, k, v from norm1(x).) Attention is written out, softmax then a regablate.nn.Dropout on the
attention probabilities, so attention dropout zeroes probabilities, never values. Both residual
branches of block l of L share the DropPath rate p·l/L (reg.droppath.p, as in the ResNet).
`no_weight_decay()` names the position embeddings and class token (timm's convention): with
norms and biases they are kept out of decay (regablate.regularisers.decay.decay_split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

import regablate.nn as rnn
from regablate.config.schema import check, positive
from regablate.errors import ConfigError
from regablate.models.convnet import classifier_head, image_shape
from regablate.nn import ModelSpec

SITES = ("attn", "proj", "embed")  # reg.dropout.<site>: the transformer's own dropout sites


@dataclass
class ViTSettings:
    name: Literal["vit"] = "vit"
    patch_size: int = positive(4)  # side of the square patches; must divide the image size
    width: int = positive(128)  # token dimension (divisible by heads)
    depth: int = positive(6)  # number of pre-norm transformer blocks
    heads: int = positive(4)  # attention heads
    mlp_ratio: float = check(lambda v: v > 0, "must be > 0", 2.0)  # MLP hidden width / width
    pool: Literal["cls", "mean"] = "cls"  # class token, or mean of the patch tokens (no class token)
    head_hidden: list[int] = check(lambda v: v > 0, "must be a list of positive widths",
                                   default=[])  # MLP head hidden widths ([] = Linear classifier)


def site_dropout(p: float, site: str) -> rnn.Dropout:
    """A fixed-rate regablate.nn.Dropout marked with its transformer site (the linter reads it)."""
    m = rnn.Dropout(p)
    m.site = site
    return m


def site_droppath(p: float) -> rnn.DropPath:
    m = rnn.DropPath(p)
    m.site = "path"  # on the residual stream of a pre-norm block (the linter reads it)
    return m


class Attention(nn.Module):
    """Multi-head self-attention, written out: probabilities = softmax(q kᵀ / √d_head), then
    `attn_drop` on the probabilities, then the weighted sum of values and the output projection."""

    def __init__(self, width: int, heads: int, attn: float, proj: float):
        super().__init__()
        self.heads, self.scale = heads, (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_drop = site_dropout(attn, "attn")
        self.proj = nn.Linear(width, width)
        self.proj_drop = site_dropout(proj, "proj")

    def probabilities(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention probabilities after attn_drop, values), both (B, heads, N, ·)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return self.attn_drop((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        attn, v = self.probabilities(x)
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, proj: float):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(width, hidden), nn.GELU(), site_dropout(proj, "proj")
        self.fc2, self.drop2 = nn.Linear(hidden, width), site_dropout(proj, "proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm block: x + droppath(attn(norm1(x))), then x + droppath(mlp(norm2(x)))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, attn: float, proj: float,
                 drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, attn, proj)
        self.drop_path1 = site_droppath(drop_path)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, max(1, round(width * mlp_ratio)), proj)
        self.drop_path2 = site_droppath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    def __init__(self, s: ViTSettings, in_shape: tuple[int, int, int], out_dim: int, spec: ModelSpec):
        super().__init__()
        c, h, w = in_shape
        sites = spec.extra.get("dropout_sites", {})
        attn, proj, embed = (float(sites.get(k, 0.0)) for k in SITES)
        n = (h // s.patch_size) * (w // s.patch_size)
        self.pool = s.pool
        self.patch_embed = nn.Conv2d(c, s.width, s.patch_size, stride=s.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, s.width)) if s.pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n + (s.pool == "cls"), s.width))
        self.embed_drop = site_dropout(embed, "embed")
        dp = spec.extra.get("droppath")
        rates = rnn.depth_rates(dp, s.depth) if dp is not None else [0.0] * s.depth
        self.blocks = nn.Sequential(*(Block(s.width, s.heads, s.mlp_ratio, attn, proj, r) for r in rates))
        self.norm = nn.LayerNorm(s.width)
        self.head = nn.Sequential(*classifier_head(s.width, s.head_hidden, out_dim, spec, "none", "gelu"))
        self._init()

    def _init(self) -> None:
        """timm's ViT init: truncated-normal(0.02) position embeddings, class token and Linear
        weights, zero biases; LayerNorm at (1, 0)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay besides norms and biases (timm's convention)."""
        return {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, N(+1), width) tokens after the embedding dropout."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.embed_drop(x + self.pos_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.tokens(x)))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))


def build_vit(s: ViTSettings, in_shape: tuple[int, ...], out_dim: int, spec: ModelSpec) -> ViT:
    c, h, w = image_shape(in_shape, "vit")
    if h % s.patch_size or w % s.patch_size:
        raise ConfigError("model.patch_size", s.patch_size, f"must divide the {h}x{w} images")
    if s.width % s.heads:
        raise ConfigError("model.heads", s.heads, f"must divide model.width ({s.width})")
    for key in ("spatial_dropout", "dropblock"):
        if key in spec.extra:
            raise ConfigError(f"reg.{key}", "on", "needs a conv model: model=convnet or model=resnet; "
                              "the ViT's dropout sites are reg.dropout.attn/proj/embed")
    if spec.norm != "none":
        raise ConfigError(f"reg.{spec.norm}norm", "on",
                          "the ViT's blocks are always pre-norm LayerNorm; drop reg.batchnorm/layernorm")
    return ViT(s, (c, h, w), out_dim, spec)
