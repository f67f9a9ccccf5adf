"""The CPU kernel of ``model.fusion``: one compiled loop over voxels and views instead of ~30 tensor passes.

Same observation model and arithmetic as the tensor path (``fusion._accumulate_block``, which
stays the GPU path and the reference the tests compare with): the homogeneous pixel coordinates
of a voxel in a view are the float32 sums ``along_z[z] + along_y[y] + along_x[x]`` of per-axis
tables built in float64 by the caller, ``u = floor(a * (1 / z))`` picks the nearest pixel (centres at
+0.5), and a view observes the voxel when that pixel has weight > 0 and the voxel lies at most
``truncation`` behind its depth. Per voxel the views are added in view order, so any chunking gives
bit-identical sums, as on the tensor path.

Why a kernel: on the CPU the tensor path spends its time on elementwise passes over every
(voxel, view) pair, and most pairs (>90 % on street paths) end up unobserved (outside the view,
behind a surface or on sky). Here such a pair costs a projection and a compare. Compiled once per
machine with Numba (``cache=True`` keeps the machine code in ``__pycache__`` or Numba's user cache).
"""

from __future__ import annotations

import numba
import numpy as np

from model.cpu_threads import run_interleaved

_F32 = np.float32


@numba.njit(cache=True, nogil=True)
def _fuse_row(along_z, along_y, along_x, depth, weight, rgb, has_rgb, H, W, truncation, z, y, acc,
              out_tsdf, out_weight, out_rgb):  # pragma: no cover - compiled
    """The voxels of row ``(z, y)``: view by view, each view over the whole row (its numbers stay in
    registers), so every voxel still adds its views in view order. ``acc [6, nx]`` is scratch."""
    S = depth.shape[0]
    nx = out_tsdf.shape[2]
    stride = W + 2
    trunc = _F32(truncation)
    inv_trunc = _F32(1.0 / truncation)
    one = _F32(1.0)
    zero = _F32(0.0)
    acc[:, :nx] = zero  # rows: weight, weight x tsdf, band weight, band weight x r, g, b
    for s in range(S):
        a0 = along_z[s, z, 0] + along_y[s, y, 0]
        b0 = along_z[s, z, 1] + along_y[s, y, 1]
        z0 = along_z[s, z, 2] + along_y[s, y, 2]
        for x in range(nx):
            zc = z0 + along_x[s, x, 2]
            if not zc > _F32(1e-20):  # behind the camera or on its plane (NaN too)
                continue
            inv_z = one / zc
            u = np.floor((a0 + along_x[s, x, 0]) * inv_z)
            if not (u >= zero and u < W):
                continue
            v = np.floor((b0 + along_x[s, x, 1]) * inv_z)
            if not (v >= zero and v < H):
                continue
            p = (int(v) + 1) * stride + int(u) + 1  # the image is stored with a one-pixel border
            w = weight[s, p]
            if not w > zero:
                continue
            sdf = depth[s, p] - zc
            if sdf < -trunc:
                continue
            t = min(max(sdf * inv_trunc, -one), one)
            acc[0, x] += w
            acc[1, x] += w * t
            if has_rgb and abs(t) < one:
                acc[2, x] += w
                acc[3, x] += w * rgb[s, p, 0]
                acc[4, x] += w * rgb[s, p, 1]
                acc[5, x] += w * rgb[s, p, 2]
    for x in range(nx):
        sw = acc[0, x]
        out_weight[z, y, x] = sw
        out_tsdf[z, y, x] = min(max(acc[1, x] / sw, -one), one) if sw > zero else np.nan
        if has_rgb:
            swb = acc[2, x]
            for c in range(3):
                out_rgb[z, y, x, c] = (np.uint8(np.rint(min(max(acc[3 + c, x] / swb, zero), one) * _F32(255.0)))
                                       if swb > zero else 0)


@numba.njit(cache=True, nogil=True)
def _fuse_rows(along_z, along_y, along_x, depth, weight, rgb, has_rgb, H, W, truncation, first, step,
               out_tsdf, out_weight, out_rgb):  # pragma: no cover - compiled
    """Rows ``first, first + step, ...`` of the region (row = z * ny + y): one thread's share."""
    nz, ny, nx = out_tsdf.shape
    acc = np.empty((6, nx), dtype=np.float32)
    for row in range(first, nz * ny, step):
        _fuse_row(along_z, along_y, along_x, depth, weight, rgb, has_rgb, H, W, truncation, row // ny, row % ny, acc,
                  out_tsdf, out_weight, out_rgb)


def fuse_region(along_z: np.ndarray, along_y: np.ndarray, along_x: np.ndarray, depth: np.ndarray,
                weight: np.ndarray, rgb: np.ndarray | None, size: tuple[int, int], truncation: float,
                threads: int | None = None) -> dict[str, np.ndarray]:
    """TSDF, weight (and colour) of one region from the per-axis projection tables
    ``along_z [S, nz, 3]``, ``along_y [S, ny, 3]``, ``along_x [S, nx, 3]`` (float32: K (R X + t) split
    by axis) and the views' ``depth`` and ``weight`` ``[S, (H+2)*(W+2)]`` float32 (images of ``size``
    ``(H, W)`` with a one-pixel border, flattened; weight 0 = no observation) and ``rgb``
    ``[S, (H+2)*(W+2), 3]`` float32 in [0, 1] or None. Runs on ``threads`` threads (default 1).
    Returns numpy arrays as ``fusion.fuse_chunk`` does."""
    nz, ny, nx = along_z.shape[1], along_y.shape[1], along_x.shape[1]
    tsdf = np.empty((nz, ny, nx), dtype=np.float32)
    wsum = np.empty((nz, ny, nx), dtype=np.float32)
    has_rgb = rgb is not None
    colour = np.empty((nz, ny, nx, 3) if has_rgb else (1, 1, 1, 3), dtype=np.uint8)
    rgb_in = rgb if has_rgb else np.zeros((1, 1, 3), dtype=np.float32)
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (along_z, along_y, along_x, depth, weight, rgb_in)]
    H, W = size
    args = (*arrays, has_rgb, int(H), int(W), float(truncation))
    # rows dealt round-robin: rows near the cameras cost more than rows behind a facade
    run_interleaved(_fuse_rows, args, (tsdf, wsum, colour), threads or 1, nz * ny, "fusion")
    out = {"tsdf": tsdf, "weight": wsum}
    if has_rgb:
        out["rgb"] = colour
    return out


def warm_up() -> None:
    """Compile (or load from the cache) the loop now, e.g. while building a container image, so the
    first collection does not pay the ~2 s."""
    table = np.zeros((1, 1, 3), dtype=np.float32)
    fuse_region(table, table, table, np.zeros((1, 9), np.float32), np.zeros((1, 9), np.float32),
                np.zeros((1, 9, 3), np.float32), (1, 1), 1.0)
