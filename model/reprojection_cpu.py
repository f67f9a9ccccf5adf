"""A compiled loop for the pose checks' depth agreement (``tasks.pose_checks._consistency``).

For every candidate depth scale, every view pair (i, j) and every pixel of view i: the pixel's point
at the scaled depth, moved into camera j, projected to j's nearest pixel and compared with j's
scaled depth there. Counts per (scale, pair): points that agree with j's depth (within ``rel_tol``
of it) and points lying well in front of it (free-space violations, closer than ``1 - 2 rel_tol``).
The per-pixel maths is float32 in the order the tensor code used, one pass with early exits instead
of ~25 elementwise passes over ``scales x pairs x pixels``. Compiled once per machine (Numba,
cached like ``model.fusion_cpu``).
"""

from __future__ import annotations

import numba
import numpy as np

_F32 = np.float32


@numba.njit(cache=True, nogil=True)
def _count(rays, offsets, K_j, depth_i, depth_j, scales, H, W, rel_tol, out):  # pragma: no cover - compiled
    P, n_pix = depth_i.shape
    N = len(scales)
    tol = _F32(rel_tol)
    front_factor = _F32(1.0) - _F32(2.0) * tol
    eps = _F32(1e-9)
    for p in range(P):
        fx, fy, cx, cy = K_j[p, 0], K_j[p, 1], K_j[p, 2], K_j[p, 3]
        ox, oy, oz = offsets[p, 0], offsets[p, 1], offsets[p, 2]
        for k in range(n_pix):
            d = depth_i[p, k]
            if not d > 0:
                continue
            rx, ry, rz = rays[p, k, 0], rays[p, k, 1], rays[p, k, 2]
            for n in range(N):  # every scale for this pixel: its numbers stay in registers
                s = scales[n]
                sd = s * d
                z = rz * sd + oz
                if not z > eps:
                    continue
                u = fx * (rx * sd + ox) / z + cx
                if not (u >= 0 and u < W):
                    continue
                v = fy * (ry * sd + oy) / z + cy
                if not (v >= 0 and v < H):
                    continue
                dj = s * depth_j[p, int(v) * W + int(u)]
                if not dj > 0:
                    continue
                if abs(z - dj) <= tol * dj:
                    out[n, p, 0] += 1
                elif z < front_factor * dj:
                    out[n, p, 1] += 1


def agreement_counts(rays: np.ndarray, offsets: np.ndarray, K_j: np.ndarray, depth_i: np.ndarray,
                     depth_j: np.ndarray, scales: np.ndarray, size: tuple[int, int], rel_tol: float) -> np.ndarray:
    """``[N, P, 2]`` int64 (agreeing, violating) pixel counts per scale and view pair.

    ``rays [P, H*W, 3]``: view i's pixel rays (z = 1) rotated into camera j; ``offsets [P, 3]``:
    camera i's centre in camera j; ``K_j [P, 4]``: (fx, fy, cx, cy) of view j; ``depth_i``,
    ``depth_j`` ``[P, H*W]``: the two views' depth (row-major, 0 = none); ``scales [N]``; all float32."""
    f32 = [np.ascontiguousarray(a, dtype=np.float32) for a in (rays, offsets, K_j, depth_i, depth_j, scales)]
    out = np.zeros((len(f32[5]), len(f32[3]), 2), dtype=np.int64)
    H, W = size
    _count(*f32, int(H), int(W), float(rel_tol), out)
    return out


def warm_up() -> None:
    """Compile (or load from the cache) the loop now, e.g. while building a container image."""
    one = np.ones((1, 1), np.float32)
    agreement_counts(np.ones((1, 1, 3), np.float32), np.zeros((1, 3), np.float32), np.ones((1, 4), np.float32), one,
                     one, np.ones(1, np.float32), (1, 1), 0.05)
