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

    def forward(self, camera_tokens: torch.Tensor, cond: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``[B, S, C]`` camera tokens -> the activated encoding after each iteration. ``cond``
        ``[B, S, C]`` (optional) is added to the normalised tokens (see :class:`ReferenceMatch`)."""
        tokens = self.token_norm(camera_tokens)
        if cond is not None:
            tokens = tokens + cond
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


class ReferenceMatch(nn.Module):
    """How each frame's content moved relative to the reference frame, as a camera-token residual.

    Not part of the published ZipMap: an inductive bias for small networks trained on little data,
    whose camera heads otherwise settle on one mean pose for every frame. Patch features of frame ``s``
    are matched softly (softmax over dot products) against the reference frame's (frame 0 of the
    call), giving a displacement field over the image: for a camera that turned, a nearly global
    shift and rotation; with translation, depth-dependent parallax. A confidence-weighted least-squares
    fit of the field by a quadratic in image position (12 numbers, independent of the image size:
    positions are in units of the longer side) plus the mean match confidence and displacement feed an
    MLP whose last layer starts at zero, so adding the module to trained weights changes nothing at first.
    Its output is added to the camera head's normalised tokens (where it is not dwarfed by the raw
    token's norm). The match logits are returned too, for a supervised matching loss
    (:func:`model.training.losses.match_loss`): without it the matches stay flat on small data.
    Cost: one ``(h w) x (h w)`` correlation per frame against one frame, linear in the number of frames.
    """

    STATS = 15  # 6 basis functions x 2 coordinates, mean confidence, mean |displacement| (x, y)

    def __init__(self, dim: int, match_dim: int = 64, hidden: int = 256, ridge: float = 1e-3):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, match_dim)
        # orthonormal rows: layer-normed features keep most of their length, so a patch's match with
        # itself stands out (softmax logit ~match_dim ** 0.5) and the field is informative from step one
        nn.init.orthogonal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.mlp = Mlp(self.STATS, hidden, dim)
        nn.init.zeros_(self.mlp.fc2.weight)
        nn.init.zeros_(self.mlp.fc2.bias)
        self.log_temperature = nn.Parameter(torch.zeros(()))  # learned sharpness of the soft matches
        self.ridge = ridge

    def forward(self, patches: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``patches`` ``[B, S, h*w, C]`` (frame 0 is the reference) -> (``[B, S, C]`` camera input,
        match logits ``[B, S, h*w, h*w]``: row i of frame s scores the reference's patches for patch i)."""
        logits = self.match_logits(self.proj(self.norm(patches)))
        return self.mlp(self.match_stats_from_logits(logits, h, w)), logits

    def match_logits(self, f: torch.Tensor) -> torch.Tensor:
        """Matching features ``[B, S, h*w, d]`` -> logits ``[B, S, h*w, h*w]`` against frame 0's."""
        scale = f.shape[-1] ** -0.5 * self.log_temperature.exp()
        return torch.einsum("bsid,bjd->bsij", f, f[:, 0]) * scale

    def match_stats(self, f: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Matching features ``[B, S, h*w, d]`` -> ``[B, S, 15]``: the quadratic fit of the displacement
        field (constant, x, y, x^2, xy, y^2 terms for the x then the y displacement, interleaved per term),
        the mean match confidence and the mean absolute displacement in x and y."""
        return self.match_stats_from_logits(self.match_logits(f), h, w)

    def match_stats_from_logits(self, logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Match logits ``[B, S, h*w, h*w]`` -> the 15 statistics of :meth:`match_stats`."""
        prob = logits.softmax(-1)  # [B, S, hw, hw]
        like = dict(device=prob.device, dtype=prob.dtype)
        ys, xs = torch.meshgrid(torch.arange(h, **like), torch.arange(w, **like), indexing="ij")
        side = float(max(h, w))
        pos = torch.stack([(xs + 0.5 - w / 2) / side, (ys + 0.5 - h / 2) / side], -1).reshape(-1, 2)  # [hw, 2]
        flow = prob @ pos - pos  # [B, S, hw, 2]: where each patch is found in the reference, minus where it is
        conf = prob.amax(-1)  # [B, S, hw]
        x, y = pos.unbind(-1)
        basis = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], -1)  # [hw, 6]
        wb = basis * conf[..., None]  # [B, S, hw, 6]
        gram = wb.transpose(-1, -2) @ basis + self.ridge * torch.eye(6, **like)
        coef = torch.linalg.solve(gram, wb.transpose(-1, -2) @ flow)  # [B, S, 6, 2]
        return torch.cat([coef.flatten(-2), conf.mean(-1, keepdim=True), flow.abs().mean(-2)], -1)


class CameraMLPHead(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.mlp = Mlp(dim, dim * mlp_ratio, POSE_DIM)

    def forward(self, camera_tokens: torch.Tensor) -> list[torch.Tensor]:
        return [activate_pose(self.mlp(camera_tokens))]
