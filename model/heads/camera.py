"""Camera heads: camera tokens -> pose encodings ``absT_quaR_FoV`` ``[B, S, 9]``.

- :class:`CameraHead`: VGGT's iterative head (facebookresearch/vggt ``vggt/heads/camera_head.py``):
  a transformer trunk over the frames' camera tokens, adaptive-LayerNorm modulated by the current
  estimate, refining the encoding over a few iterations. Used by ``main``, ``ref_view`` and
  ``state_query``.
- :class:`CameraMLPHead`: one MLP per camera token, used by the ``streaming`` variant (ZipMap's
  online model), so a frame's pose depends only on its own token.

The encoding is ``[t (3), q (4, xyzw), fov_h, fov_w]`` (see :mod:`model.geometry`); translation and
quaternion are linear outputs, the fields of view pass through ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.block import Block, Mlp

POSE_DIM = 9


def activate_pose(enc: torch.Tensor) -> torch.Tensor:
    """Translation and quaternion stay linear; the two fields of view must be positive (ReLU)."""
    return torch.cat([enc[..., :7], F.relu(enc[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    def __init__(self, dim: int, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01, iterations: int = 4):
        super().__init__()
        self.iterations = iterations
        self.trunk = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, init_values) for _ in range(trunk_depth)))
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim)
        # index 0 is the SiLU, so the linear layer is "poseLN_modulation.1" as in the checkpoints
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, POSE_DIM)

    def forward(self, camera_tokens: torch.Tensor) -> list[torch.Tensor]:
        """``[B, S, C]`` camera tokens -> the activated encoding after each iteration."""
        tokens = self.token_norm(camera_tokens)
        B, S, _ = tokens.shape
        raw = None
        history = []
        for _ in range(self.iterations):
            cond = self.empty_pose_tokens.expand(B, S, -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(cond)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
            history.append(activate_pose(raw))
        return history


class CameraMLPHead(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.mlp = Mlp(dim, dim * mlp_ratio, POSE_DIM)

    def forward(self, camera_tokens: torch.Tensor) -> list[torch.Tensor]:
        return [activate_pose(self.mlp(camera_tokens))]
