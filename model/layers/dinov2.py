"""Patch embeddings: a strided convolution, and a DINOv2 vision transformer with registers.

References: DINOv2 (Oquab et al., arXiv 2304.07193) and "Vision Transformers Need Registers"
(Darcet et al., arXiv 2309.16588); layout of facebookresearch/dinov2 ``dinov2/models/
vision_transformer.py``. Only what ZipMap uses is kept: the image goes through the ViT and the
normalised patch tokens come out; the class and register tokens are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .block import Block


class PatchEmbed(nn.Module):
    """``[B, C, H, W]`` -> ``[B, (H/p)*(W/p), D]`` with one ``p x p`` stride-``p`` convolution."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, norm: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D), row-major patches
        return self.norm(x)


class DinoV2(nn.Module):
    """DINOv2 ViT with register tokens, returning the final-normed patch tokens ``[B, h*w, D]``.

    ``pos_embed`` covers a square grid of ``img_size / patch_size`` patches plus the class token;
    other grids are reached by bicubic (antialiased) interpolation of that table, computed in
    float32 as in the published model.
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 num_register_tokens: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(3, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # Unused at inference (masked-image pre-training only) but part of the official state dict.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        # DINOv2 uses LayerNorm eps 1e-6 and layer-scale init 1.0.
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=1.0, norm_eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_register_tokens = num_register_tokens

    def position_table(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """Position embeddings for the class token and a ``grid_h x grid_w`` patch grid."""
        n = self.pos_embed.shape[1] - 1
        side = int(round(n ** 0.5))
        if grid_h * grid_w == n and grid_h == grid_w:
            return self.pos_embed
        table = self.pos_embed.float()
        patches = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([table[:, :1], patches], dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self.position_table(H // self.patch_size, W // self.patch_size, x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 1 + self.num_register_tokens:]
