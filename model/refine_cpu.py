"""The compiled inner loop of ``model.refine``: one Gauss-Newton system per frame pair.

For every pair p and every selected pixel k of frame i (its camera-frame point ``points[p, k]``,
grey value ``ref[p, k]``): the point moved by the pair's pose ``R[p], t[p]`` and projected with
frame j's ``(fx, fy, cx, cy)``; frame j's grey value and its x / y gradients read there by bilinear
interpolation (the samples of ``torch.nn.functional.grid_sample(mode="bilinear",
align_corners=False)``, pixel centres at +0.5; points within a pixel of the border are left out);
the residual, its Huber
weight and its Jacobian with respect to a left perturbation ``(translation, rotation)`` of the pose
are summed into the pair's 6x6 normal matrix and right-hand side (float64 sums). One pass with
early exits instead of ~60 tensor passes per step; compiled once per machine (Numba, cached).
"""

from __future__ import annotations

import numba
import numpy as np

from model.cpu_threads import run_interleaved


@numba.njit(cache=True, nogil=True)
def _systems(points, ok, ref, maps, R, t, K, huber, first, step, H, b, cost):  # pragma: no cover - compiled
    """Pairs ``first, first + step, ...``: one thread's share."""
    P, N = ok.shape
    h, w = maps.shape[2], maps.shape[3]
    for p in range(first, P, step):
        fx, fy, cx, cy = K[p, 0], K[p, 1], K[p, 2], K[p, 3]
        r00, r01, r02, r10, r11, r12 = R[p, 0, 0], R[p, 0, 1], R[p, 0, 2], R[p, 1, 0], R[p, 1, 1], R[p, 1, 2]
        r20, r21, r22, t0, t1, t2 = R[p, 2, 0], R[p, 2, 1], R[p, 2, 2], t[p, 0], t[p, 1], t[p, 2]
        # the 21 entries of the symmetric normal matrix and the 6 of the right-hand side, as scalars
        h00 = h01 = h02 = h03 = h04 = h05 = h11 = h12 = h13 = h14 = h15 = 0.0
        h22 = h23 = h24 = h25 = h33 = h34 = h35 = h44 = h45 = h55 = 0.0
        b0 = b1 = b2 = b3 = b4 = b5 = 0.0
        total = 0.0
        for k in range(N):
            if not ok[p, k]:
                continue
            X0, X1, X2 = points[p, k, 0], points[p, k, 1], points[p, k, 2]
            x = r00 * X0 + r01 * X1 + r02 * X2 + t0
            y = r10 * X0 + r11 * X1 + r12 * X2 + t1
            z = r20 * X0 + r21 * X1 + r22 * X2 + t2
            if not z > 1e-6:
                continue
            u = fx * x / z + cx
            v = fy * y / z + cy
            if not (u > 1.0 and u < w - 1.0 and v > 1.0 and v < h - 1.0):
                continue
            # bilinear weights once for the three maps (pixel centres at +0.5; u, v are inside)
            sx = u - 0.5
            sy = v - 0.5
            x0 = int(sx)
            y0 = int(sy)
            ax = sx - x0
            ay = sy - y0
            w00 = (1.0 - ax) * (1.0 - ay)
            w01 = ax * (1.0 - ay)
            w10 = (1.0 - ax) * ay
            w11 = ax * ay
            val = (maps[p, 0, y0, x0] * w00 + maps[p, 0, y0, x0 + 1] * w01 + maps[p, 0, y0 + 1, x0] * w10
                   + maps[p, 0, y0 + 1, x0 + 1] * w11)
            gx = (maps[p, 1, y0, x0] * w00 + maps[p, 1, y0, x0 + 1] * w01 + maps[p, 1, y0 + 1, x0] * w10
                  + maps[p, 1, y0 + 1, x0 + 1] * w11)
            gy = (maps[p, 2, y0, x0] * w00 + maps[p, 2, y0, x0 + 1] * w01 + maps[p, 2, y0 + 1, x0] * w10
                  + maps[p, 2, y0 + 1, x0 + 1] * w11)
            r = val - ref[p, k]
            gu = gx * fx / z
            gv = gy * fy / z
            gz = -(gu * x + gv * y) / z
            j0, j1, j2 = gu, gv, gz  # d r / d X' (translation part)
            j3, j4, j5 = y * gz - z * gv, z * gu - x * gz, x * gv - y * gu  # X' x d r / d X' (rotation part)
            a_r = abs(r)
            wt = 1.0 if a_r < huber else huber / a_r
            total += wt * r * r
            w0, w1, w2, w3, w4, w5 = wt * j0, wt * j1, wt * j2, wt * j3, wt * j4, wt * j5
            b0 += w0 * r
            b1 += w1 * r
            b2 += w2 * r
            b3 += w3 * r
            b4 += w4 * r
            b5 += w5 * r
            h00 += w0 * j0
            h01 += w0 * j1
            h02 += w0 * j2
            h03 += w0 * j3
            h04 += w0 * j4
            h05 += w0 * j5
            h11 += w1 * j1
            h12 += w1 * j2
            h13 += w1 * j3
            h14 += w1 * j4
            h15 += w1 * j5
            h22 += w2 * j2
            h23 += w2 * j3
            h24 += w2 * j4
            h25 += w2 * j5
            h33 += w3 * j3
            h34 += w3 * j4
            h35 += w3 * j5
            h44 += w4 * j4
            h45 += w4 * j5
            h55 += w5 * j5
        upper = (h00, h01, h02, h03, h04, h05, h11, h12, h13, h14, h15, h22, h23, h24, h25, h33, h34, h35,
                 h44, h45, h55)
        n = 0
        for a in range(6):
            for c in range(a, 6):
                H[p, a, c] = upper[n]
                H[p, c, a] = upper[n]
                n += 1
        b[p, 0], b[p, 1], b[p, 2], b[p, 3], b[p, 4], b[p, 5] = b0, b1, b2, b3, b4, b5
        cost[p] = total


def normal_equations(points: np.ndarray, ok: np.ndarray, ref: np.ndarray, maps: np.ndarray, T: np.ndarray,
                     K: np.ndarray, huber: float, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(H [P, 6, 6], b [P, 6], cost [P])`` float64 for the poses ``T [P, 4, 4]`` (camera i -> camera j).

    ``points [P, N, 3]``, ``ok [P, N]`` bool, ``ref [P, N]`` (frame i); ``maps [P, 3, h, w]``: frame j's
    grey values and x / y gradients; ``K [P, 4]``: frame j's (fx, fy, cx, cy); float32 except ``T``.
    Pairs are shared out over ``threads`` threads (the loop releases the GIL)."""
    P = len(ok)
    H = np.empty((P, 6, 6))
    b = np.empty((P, 6))
    cost = np.empty(P)
    f32 = [np.ascontiguousarray(a, dtype=np.float32) for a in (points, ref, maps, K)]
    R = np.ascontiguousarray(T[:, :3, :3], dtype=np.float64)
    t = np.ascontiguousarray(T[:, :3, 3], dtype=np.float64)
    args = (f32[0], np.ascontiguousarray(ok, dtype=np.bool_), f32[1], f32[2], R, t, f32[3], float(huber))
    run_interleaved(_systems, args, (H, b, cost), threads, P, "refine")
    return H, b, cost


def warm_up() -> None:
    """Compile (or load from the cache) the loop now, e.g. while building a container image."""
    normal_equations(np.ones((1, 1, 3), np.float32), np.ones((1, 1), bool), np.zeros((1, 1), np.float32),
                     np.zeros((1, 3, 4, 4), np.float32), np.eye(4)[None], np.ones((1, 4), np.float32), 0.05)
