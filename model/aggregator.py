"""The ZipMap trunk: per-frame attention alternating with global test-time-training blocks.

Layout follows VGGT's aggregator (facebookresearch/vggt ``vggt/models/aggregator.py``) with its
global attention replaced by TTT (ZipMap, arXiv 2603.04385, Sec. 3.2). Each frame becomes
``P = 1 + R + h*w`` tokens: one camera token, ``R`` register tokens and the patch tokens. Query
views of the state-query variant become ``P`` tokens too: ``1 + R`` learned ray-condition tokens and
the patch embedding of their Plücker ray map.

Token layouts: frame blocks see ``(B*S, P, C)`` (attention within a frame, 2-D RoPE); global
blocks see ``(B, S*P, C)`` (TTT across all frames, linear in S). With ``global_mixer="attention"``
the global blocks are softmax attention over all ``S*P`` tokens instead: the quadratic VGGT-style
baseline used in benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import ZipMapConfig
from .layers.block import Block
from .layers.dinov2 import DinoV2, PatchEmbed
from .layers.rope import RoPE2D, patch_positions
from .ttt import FastWeights, TTTBlock, TTTOp

# ImageNet statistics used by DINOv2; kept as float32 constants like the published model.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def frame_tokens(token: torch.Tensor, batch: int, frames: int, shared: bool, reference_first: bool,
                 ) -> torch.Tensor:
    """Expand a ``(1, 2, X, C)`` special-token table to ``(batch*frames, X, C)``.

    Slot 0 is the reference frame's token and slot 1 every other frame's. ``shared`` (the
    affine-invariant variant) gives slot 1 to all frames; otherwise frame 0 gets slot 0 when
    ``reference_first`` is set (a stream continuing from a stored state has no reference frame).
    """
    other = token[:, 1:2].expand(batch, frames, *token.shape[2:])
    if not shared and reference_first:
        first = token[:, 0:1].expand(batch, 1, *token.shape[2:])
        other = torch.cat([first, other[:, 1:]], dim=1)
    return other.reshape(batch * frames, *token.shape[2:])


def build_schedule(image_frames: int, query_frames: int, tokens_per_frame: int, window: int | None,
                   has_images: bool) -> list[TTTOp]:
    """The TTT update/apply schedule for one call (token units).

    - render from a stored state (no images): apply to all tokens
    - images plus query views: update on the image tokens, then apply to all tokens
    - windowed streaming: per window of ``window`` frames, update then apply
    - offline: update on all tokens, then apply to all tokens
    """
    P = tokens_per_frame
    if not has_images:
        return [TTTOp(0, -1, update=False, apply=True)]
    if query_frames:
        return [TTTOp(0, image_frames * P, True, False), TTTOp(0, -1, False, True)]
    if window:
        total = image_frames * P
        ops = []
        for start in range(0, total, window * P):
            end = min(start + window * P, total)
            ops += [TTTOp(start, end, True, False), TTTOp(start, end, False, True)]
        return ops
    return [TTTOp(0, -1, True, False), TTTOp(0, -1, False, True)]


class Aggregator(nn.Module):
    def __init__(self, cfg: ZipMapConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        if cfg.patch_embed == "dinov2":
            self.patch_embed = DinoV2(cfg.img_size, cfg.patch_size, C, cfg.vit_depth, cfg.vit_num_heads,
                                      cfg.num_register_tokens)
        else:
            self.patch_embed = PatchEmbed(3, C, cfg.patch_size)
        self.rope = RoPE2D(cfg.rope_freq) if cfg.rope_freq > 0 else None
        self.frame_blocks = nn.ModuleList(
            Block(C, cfg.num_heads, cfg.mlp_ratio, cfg.init_values, qk_norm=cfg.qk_norm, rope=self.rope)
            for _ in range(cfg.depth)
        )
        if cfg.global_mixer == "ttt":
            self.global_blocks = nn.ModuleList(
                TTTBlock(C, cfg.ttt_head_dim, cfg.mlp_ratio, cfg.init_values,
                         inter_multi=cfg.ttt_inter_multi, bias=cfg.ttt_bias, base_lr=cfg.ttt_base_lr,
                         muon_steps=cfg.ttt_muon_steps, gate=cfg.ttt_gate, ns_dtype=cfg.ns_dtype)
                for _ in range(cfg.depth)
            )
        else:
            self.global_blocks = nn.ModuleList(
                Block(C, cfg.num_heads, cfg.mlp_ratio, cfg.init_values, qk_norm=cfg.qk_norm, rope=self.rope)
                for _ in range(cfg.depth)
            )
        R = cfg.num_register_tokens
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, R, C) * 1e-6)
        if cfg.enable_nvs:
            self.ray_patch_embed = PatchEmbed(cfg.nvs_ray_dim, C, cfg.patch_size, norm=True)
            self.ray_cond_token = nn.Parameter(torch.randn(1, 1, 1 + R, C) * 1e-6)

    @property
    def patch_start_idx(self) -> int:
        return self.cfg.patch_start_idx

    def embed_images(self, images: torch.Tensor, reference_first: bool) -> torch.Tensor:
        """``[B, S, 3, H, W]`` in [0, 1] -> tokens ``[B, S, P, C]``."""
        B, S, _, H, W = images.shape
        mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32, device=images.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD, dtype=torch.float32, device=images.device).view(1, 1, 3, 1, 1)
        x = ((images - mean) / std).reshape(B * S, 3, H, W)
        patches = self.patch_embed(x)  # (B*S, h*w, C)
        cam = frame_tokens(self.camera_token, B, S, self.cfg.affine_invariant, reference_first)
        reg = frame_tokens(self.register_token, B, S, self.cfg.affine_invariant, reference_first)
        tokens = torch.cat([cam.to(patches.dtype), reg.to(patches.dtype), patches], dim=1)
        return tokens.reshape(B, S, -1, tokens.shape[-1])

    def embed_rays(self, rays: torch.Tensor) -> torch.Tensor:
        """Plücker ray maps ``[B, T, 9, H, W]`` -> query tokens ``[B, T, P, C]``."""
        if not self.cfg.enable_nvs:
            raise ValueError("this network has no ray-query head (enable_nvs=False)")
        B, T, D, H, W = rays.shape
        if D != self.cfg.nvs_ray_dim:
            raise ValueError(f"ray conditions have {D} channels, expected {self.cfg.nvs_ray_dim}")
        patches = self.ray_patch_embed(rays.reshape(B * T, D, H, W))
        special = self.ray_cond_token[0, 0].expand(B * T, -1, -1).to(patches.dtype)
        tokens = torch.cat([special, patches], dim=1)
        return tokens.reshape(B, T, -1, tokens.shape[-1])

    def forward(
        self,
        images: torch.Tensor | None,
        query_rays: torch.Tensor | None = None,
        state: Sequence[FastWeights] | None = None,
        window: int | None = None,
        reference_first: bool = True,
    ) -> tuple[list[torch.Tensor], list[FastWeights] | None]:
        """Run the trunk.

        Returns the four intermediate outputs ``[B, S+T, P, 2C]`` (frame and global block outputs
        concatenated on channels) for the layers in ``cfg.intermediate_layers``, and the fast
        weights of every TTT layer after this call (``None`` for the attention baseline).
        """
        parts = []
        if images is not None:
            parts.append(self.embed_images(images, reference_first))
            H, W = images.shape[-2:]
        if query_rays is not None:
            parts.append(self.embed_rays(query_rays))
            H, W = query_rays.shape[-2:]
        if not parts:
            raise ValueError("nothing to process: pass images, query rays or both")
        tokens = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        B, S_total, P, C = tokens.shape
        S_img = images.shape[1] if images is not None else 0
        ph, pw = H // self.cfg.patch_size, W // self.cfg.patch_size
        pos = patch_positions(B * S_total, ph, pw, self.patch_start_idx, tokens.device)

        is_ttt = self.cfg.global_mixer == "ttt"
        ops = build_schedule(S_img, S_total - S_img, P, window, images is not None)
        if not is_ttt and (images is None or window or query_rays is not None or state is not None):
            raise ValueError("the attention baseline supports offline reconstruction only")

        x = tokens.reshape(B * S_total, P, C)
        outputs, new_state = [], []
        for i in range(self.cfg.depth):
            x = self.frame_blocks[i](x, pos=pos)
            frame_out = x.reshape(B, S_total, P, C)
            x = x.reshape(B, S_total * P, C)
            if is_ttt:
                x, layer_state = self.global_blocks[i](x, ops, None if state is None else state[i])
                new_state.append(layer_state)
            else:
                x = self.global_blocks[i](x, pos=pos.reshape(B, S_total * P, 2))
            if i in self.cfg.intermediate_layers:
                outputs.append(torch.cat([frame_out, x.reshape(B, S_total, P, C)], dim=-1))
            x = x.reshape(B * S_total, P, C)
        return outputs, (new_state if is_ttt else None)
