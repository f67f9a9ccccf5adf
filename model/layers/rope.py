"""2-D rotary position embedding (RoPE) for patch grids.

References: RoFormer (arXiv 2104.09864) extended to 2-D as in VGGT / CroCo (facebookresearch/vggt
``vggt/layers/rope.py``). Half of each head's channels rotate with the patch row, the other half
with the column; special tokens (camera, registers) sit at position (0, 0), which is the identity
rotation, and patches start at (1, 1).
"""

from __future__ import annotations

import torch


def patch_positions(num_frames: int, grid_h: int, grid_w: int, num_special: int, device) -> torch.Tensor:
    """Integer (row, col) positions of every token of every frame: ``[num_frames, P, 2]``.

    Special tokens get (0, 0); patch (i, j) gets (i + 1, j + 1).
    """
    rows = torch.arange(grid_h, device=device)
    cols = torch.arange(grid_w, device=device)
    grid = torch.cartesian_prod(rows, cols) + 1  # (h*w, 2), row-major like the patch order
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    pos = torch.cat([special, grid], dim=0)
    return pos.unsqueeze(0).expand(num_frames, -1, -1)


class RoPE2D(torch.nn.Module):
    """Applies 2-D RoPE to ``[B, heads, N, head_dim]`` tokens given ``[B, N, 2]`` positions."""

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = base
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, dim: int, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dim, length, str(device), dtype)
        if key not in self._cache:
            # Angles are formed in float32 and then cast, as in the published model, so a float64
            # build reproduces the reference numerics exactly.
            inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device).float() / dim))
            angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
            angles = torch.cat([angles, angles], dim=-1).to(dtype)  # (length, dim)
            self._cache[key] = (angles.cos(), angles.sin())
        return self._cache[key]

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        cos, sin = self._tables(half, int(pos.max()) + 1, x.device, x.dtype)
        out = []
        for axis, part in enumerate(x.split(half, dim=-1)):
            c = cos[pos[..., axis]].unsqueeze(1)  # (B, 1, N, half)
            s = sin[pos[..., axis]].unsqueeze(1)
            out.append(part * c + self._rotate_half(part) * s)
        return torch.cat(out, dim=-1)
