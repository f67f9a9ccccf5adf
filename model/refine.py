"""Pose refinement: direct image alignment of neighbouring frames with the predicted depth.

The network's per-view depth is far better than its camera rotations (model card): on held-out
orbits it predicts nearly the same rotation for every frame. This stage keeps the network's depth
and intrinsics and re-estimates each relative pose ``frame i -> frame i+1`` by direct (photometric)
alignment: the pixels of frame i, lifted to 3-D with its predicted depth, are moved by the pose,
projected into frame i+1, and the pose minimises the robust (Huber) difference of the grey values
there, by Gauss-Newton on SE(3) from coarse to fine image levels (the direct formulation of
LSD-SLAM / DSO, Engel et al. ECCV 2014 / TPAMI 2018; here two frames at a time, no map). The
normal equations of each step come from a compiled loop (``model.refine_cpu``). The absolute poses
are the chain of relative ones from the network's first camera, so the world frame and the scene
scale stay the network's.

A refined pair is kept only when it explains frame i+1 better than the network's relative pose
(lower truncated photometric error over the pixels of frame i that both poses keep inside frame
i+1, at least 20 % of them): a pair that does not overlap, or where the alignment diverged, keeps
the network's estimate. Frames are taken in collection order (sorted file names): walks, orbits and flights are
sequences; for an unordered photo set few pairs overlap and most keep the network's poses.

Conventions as in ``model.geometry``: OpenCV axes, ``cam_from_world [S, 3, 4]``, intrinsics in
pixels of the images given, pixel centres at +0.5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_GREY = (0.299, 0.587, 0.114)


@dataclass
class Refinement:
    """Result of :func:`refine_poses` (numpy)."""

    cam_from_world: np.ndarray  # [S, 3, 4] float64: refined where accepted, the network's elsewhere
    accepted: np.ndarray        # [S-1] bool: pair (i, i+1) took the refined relative pose
    cost_before: np.ndarray     # [S-1] truncated photometric error of the network's relative pose
    cost_after: np.ndarray      # [S-1] the same for the refined one
    seconds: float

    def to_dict(self) -> dict:
        return {"pairs": len(self.accepted), "accepted": int(self.accepted.sum()),
                "cost_before": [round(float(c), 4) for c in self.cost_before],
                "cost_after": [round(float(c), 4) for c in self.cost_after], "seconds": round(self.seconds, 4)}


def _hat(w: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(w[..., 0])
    return torch.stack([torch.stack([zero, -w[..., 2], w[..., 1]], -1),
                        torch.stack([w[..., 2], zero, -w[..., 0]], -1),
                        torch.stack([-w[..., 1], w[..., 0], zero], -1)], -2)


def _so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vectors ``[..., 3]`` -> rotation matrices ``[..., 3, 3]``."""
    theta = w.norm(dim=-1)[..., None, None]
    A = _hat(w)
    small = theta < 1e-8
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, torch.ones_like(theta), torch.sin(safe) / safe)
    b = torch.where(small, torch.full_like(theta, 0.5), (1 - torch.cos(safe)) / safe**2)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * A + b * (A @ A)


def _level(grey: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, h: int, w: int):
    """Images, depth (mean of fully valid blocks, else 0) and intrinsics at size ``(h, w)``."""
    H, W = grey.shape[-2:]
    if (h, w) == (H, W):
        return grey, depth, K
    g = F.adaptive_avg_pool2d(grey, (h, w))
    valid = (depth > 0).to(depth.dtype)[:, None]
    total = F.adaptive_avg_pool2d(torch.where(valid > 0, depth[:, None], 0.0), (h, w))
    frac = F.adaptive_avg_pool2d(valid, (h, w))
    d = torch.where(frac > 0.999, total / frac.clamp_min(1e-6), 0.0)[:, 0]
    Kl = K.clone()
    Kl[:, 0] *= w / W
    Kl[:, 1] *= h / H
    return g, d, Kl


def _lift(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``[P, h*w, 3]`` of every pixel (pixel centres at +0.5)."""
    P, h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5,
                          torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5, indexing="ij")
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    return torch.stack([x * depth, y * depth, depth], -1).reshape(P, h * w, 3)


def _gradients(img: torch.Tensor) -> torch.Tensor:
    """``[P, 1, h, w]`` -> ``[P, 3, h, w]``: the image and its central-difference x and y gradients."""
    gx = torch.zeros_like(img)
    gy = torch.zeros_like(img)
    gx[..., 1:-1] = (img[..., 2:] - img[..., :-2]) / 2
    gy[..., 1:-1, :] = (img[..., 2:, :] - img[..., :-2, :]) / 2
    return torch.cat([img, gx, gy], 1)


def _project(X: torch.Tensor, T: torch.Tensor, K: torch.Tensor):
    Xj = X @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    z = Xj[..., 2]
    zs = z.clamp_min(1e-6)
    u = K[:, 0, 0, None] * Xj[..., 0] / zs + K[:, 0, 2, None]
    v = K[:, 1, 1, None] * Xj[..., 1] / zs + K[:, 1, 2, None]
    return Xj, z, zs, u, v


def _sample(maps: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h, w = maps.shape[-2:]
    grid = torch.stack([u * (2.0 / w) - 1, v * (2.0 / h) - 1], -1)[:, None]
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]


def _costs(X, ok, ref, target, T_a, T_b, K, clip, min_overlap: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean truncated absolute grey difference under two poses, over frame i's valid pixels that land
    inside frame j under both (a fair comparison: leaving the image is neither penalised nor
    rewarded). Pairs with less than ``min_overlap`` of the valid pixels in common get ``inf`` for
    both (never accepted)."""
    h, w = target.shape[-2:]
    residuals, masks = [], []
    for T in (T_a, T_b):
        _, z, _, u, v = _project(X, T.to(X.dtype), K)
        masks.append(ok & (z > 1e-6) & (u >= 0) & (u <= w) & (v >= 0) & (v <= h))
        residuals.append((_sample(target, u, v)[:, 0] - ref).abs().clamp_max(clip))
    both = masks[0] & masks[1]
    n = both.sum(1)
    enough = n >= min_overlap * ok.sum(1).clamp_min(1)
    return tuple(torch.where(enough, (r * both).sum(1) / n.clamp_min(1), torch.inf) for r in residuals)


def _gauss_newton(X, ok, ref, maps, T, K, iters: int, huber: float, tol: float) -> torch.Tensor:
    """At most ``iters`` steps on every pair's pose ``T [P, 4, 4]`` (float64); stops early once no
    pair's step moves a point of frame i by more than ``tol`` pixels (rotation x focal length,
    translation x focal length / median depth). The normal equations come from the compiled loop of
    ``model.refine_cpu``; the 6x6 solves and updates are float64."""
    from model.refine_cpu import normal_equations  # Numba loads on first use

    focal = float(K[:, :2, :2].diagonal(dim1=1, dim2=2).max())
    depth = X[..., 2][ok]
    scale = focal / float(depth.median()) if depth.numel() else focal
    args = (X.numpy(), ok.numpy(), ref.numpy(), maps.numpy())
    Kv = torch.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], 1).numpy()
    eye = torch.eye(6, dtype=torch.float64)
    for _ in range(iters):
        # one thread: the pairs' loops gained nothing from this VM's second core, and thread start-up
        # cost more than a coarse level's step (docs/benchmarks.md)
        H, b, _ = normal_equations(*args, T.numpy(), Kv, huber, threads=1)
        H, b = torch.from_numpy(H), torch.from_numpy(b)
        H = H + 1e-4 * torch.diag_embed(torch.diagonal(H, dim1=1, dim2=2)) + 1e-9 * eye
        xi = -torch.linalg.solve(H, b)
        xi = torch.where(torch.isfinite(xi).all(1, keepdim=True), xi, 0.0)
        step = torch.eye(4, dtype=torch.float64).repeat(len(T), 1, 1)
        step[:, :3, :3] = _so3_exp(xi[:, 3:])
        step[:, :3, 3] = xi[:, :3]
        T = step @ T
        moved = max(float(xi[:, 3:].norm(dim=1).max()) * focal, float(xi[:, :3].norm(dim=1).max()) * scale)
        if moved < tol:
            break
    return T


def _log_se3(T: torch.Tensor) -> torch.Tensor:
    """``[E, 4, 4]`` near the identity -> ``[E, 6]`` (translation, rotation vector): the residual of the
    pose graph (the translation is the matrix's, exact to first order, which is all Gauss-Newton needs)."""
    R = T[:, :3, :3]
    cos = ((R.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)
    theta = torch.arccos(cos)
    vee = torch.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], 1)
    sin = torch.sin(theta)
    factor = torch.where(sin > 1e-9, theta / (2 * sin.clamp_min(1e-12)), torch.full_like(theta, 0.5))
    return torch.cat([T[:, :3, 3], factor[:, None] * vee], 1)


def _adjoint(T: torch.Tensor) -> torch.Tensor:
    """Adjoint ``[E, 6, 6]`` of ``[E, 4, 4]`` for (translation, rotation) twists:
    ``T exp(x) T^-1 = exp(Ad(T) x)``."""
    R, t = T[:, :3, :3], T[:, :3, 3]
    A = torch.zeros(len(T), 6, 6, dtype=T.dtype)
    A[:, :3, :3] = R
    A[:, 3:, 3:] = R
    A[:, :3, 3:] = _hat(t) @ R
    return A


def pose_graph(Tw: torch.Tensor, i: torch.Tensor, j: torch.Tensor, rel: torch.Tensor, scale: float,
               iters: int = 10, tol: float = 1e-10, trans_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute poses ``Tw [S, 4, 4]`` (world -> camera, float64) that best agree with the relative ones
    ``rel [E, 4, 4]`` (camera i -> camera j) of the edges ``(i, j)``: Gauss-Newton on
    ``sum_e |log(rel_e Tw_i Tw_j^-1)|^2`` with left perturbations, the first camera held fixed (it is
    the world frame), translations measured in units of ``scale`` (the scene's median depth) and
    weighted per edge by ``trans_weight [E]`` (default 1).
    Jacobians are the usual first-order ones (``Ad(rel_e)`` for frame i, ``-1`` for frame j); on a tree
    (one edge per neighbouring pair) the start, if it is the chain of ``rel``, is already the answer.
    The normal equations are dense, ``(6 S)^2`` float64 entries: fine for hundreds of frames (700
    frames: 141 MB), not for tens of thousands."""
    S = len(Tw)
    weight = torch.tensor([1 / scale] * 3 + [1.0] * 3, dtype=torch.float64).repeat(len(i), 1)
    if trans_weight is not None:
        weight[:, :3] *= trans_weight[:, None]
    Ji = _adjoint(rel) * weight[..., None]
    for _ in range(iters):
        r = _log_se3(rel @ Tw[i] @ torch.linalg.inv(Tw[j])) * weight
        H = torch.zeros(S, 6, S, 6, dtype=torch.float64)
        b = torch.zeros(S, 6, dtype=torch.float64)
        Jj = -torch.diag_embed(weight)
        for a, Ja in ((i, Ji), (j, Jj)):
            b.index_add_(0, a, (Ja.transpose(1, 2) @ r[..., None])[..., 0])
            for c, Jc in ((i, Ji), (j, Jj)):
                block = Ja.transpose(1, 2) @ Jc
                H.view(S, 6, S * 6).index_put_((a[:, None, None], torch.arange(6)[None, :, None],
                                                (c[:, None, None] * 6 + torch.arange(6)[None, None, :])),
                                               block, accumulate=True)
        H = H.reshape(6 * S, 6 * S)[6:, 6:]
        H = H + 1e-9 * torch.eye(len(H), dtype=torch.float64)
        dx = -torch.linalg.solve(H, b.reshape(-1)[6:]).reshape(S - 1, 6)
        step = torch.eye(4, dtype=torch.float64).repeat(S - 1, 1, 1)
        step[:, :3, :3] = _so3_exp(dx[:, 3:])
        step[:, :3, 3] = dx[:, :3]
        Tw = torch.cat([Tw[:1], step @ Tw[1:]])
        if float(dx.abs().max()) < tol:
            break
    return Tw


def _align(grey, D, K, i, j, T, levels, iters, max_points, huber, tol) -> torch.Tensor:
    """The relative poses ``T [P, 4, 4]`` (camera i -> camera j) after Gauss-Newton over the image levels."""
    S, _, H, W = grey.shape
    for level in reversed(range(levels)):
        if iters[levels - 1 - level] == 0:
            continue
        h, w = max(1, H >> level), max(1, W >> level)
        g, d, Kl = _level(grey, D, K, h, w)
        X = _lift(d[i], Kl[i])
        ref = g[i].reshape(len(i), -1)
        ok = d[i].reshape(len(i), -1) > 0
        if level == 0 and max_points is not None and max_points < h * w:  # frame i's strongest gradients
            mag = _gradients(g[i])[:, 1:].square().sum(1).reshape(len(i), -1)
            pick = torch.where(ok, mag, -1.0).topk(max_points, dim=1).indices
            X, ref, ok = X.gather(1, pick[..., None].expand(-1, -1, 3)), ref.gather(1, pick), ok.gather(1, pick)
        T = _gauss_newton(X.contiguous(), ok.contiguous(), ref.contiguous(), _gradients(g[j]).contiguous(), T, Kl[j],
                          iters[levels - 1 - level], huber, tol)
    return T


@torch.no_grad()
def refine_poses(images, depth, intrinsics, cam_from_world, levels: int = 4, iters: tuple[int, ...] = (12, 12, 12, 12),
                 max_points: int | None = None, huber: float = 0.05, clip: float = 0.2, tol: float = 0.01,
                 gaps: tuple[int, ...] = (1,)) -> Refinement:
    """Refine the relative poses of consecutive frames by direct alignment (module docstring).

    ``images [S, 3, h, w]`` float in [0, 1] (or uint8 ``[S, h, w, 3]``), ``depth [S, h, w]`` (0 = none),
    ``intrinsics [S, 3, 3]`` and ``cam_from_world [S, 3, 4]`` at the same size (numpy or torch, any
    device; it runs on the CPU, one thread).

    ``levels`` image levels (each half the size of the next) and ``iters`` Gauss-Newton steps per
    level, coarse to fine. The coarsest level (1/8 of the size) widens the reach to the 10-17 degree
    steps of hand-held paths (held-out hand-held AUC@30 0.37 -> 0.67 against 3 levels); the finest
    needs its full share (on held-out aerial passes, 2-4 steps there left the poses worse than the
    network's). ``max_points``: at the finest level only that many pixels of frame i, those with the
    strongest gradient (default: all; 8,192 of 18,816 lost 0.01 of held-out AUC@30, 4,096 0.04).
    Grey values are in [0, 1]: ``huber`` is the Huber threshold, ``clip`` the truncation of the
    acceptance test; a level stops early once no pair's step moves a point by more than ``tol``
    pixels of that level.

    ``gaps``: the pairs ``(i, i + g)`` for each ``g`` (1, the neighbouring pairs, must be among them).
    With ``(1,)`` the poses are the chain of the neighbouring pairs. Pairs further apart start from
    whichever of the chain's and the network's relative pose explains frame i + g better, are aligned
    the same way, and, where they pass the acceptance test, join a pose graph (:func:`pose_graph`)
    as rotation constraints that spread the chain's drift. ``Refinement.accepted`` and the costs list
    the pairs gap by gap in the order given (the neighbouring ones first).
    """
    t0 = time.perf_counter()
    img = torch.as_tensor(images).cpu()
    if img.dtype == torch.uint8:
        img = img.permute(0, 3, 1, 2).float() / 255.0
    img = img.float()
    D = torch.as_tensor(depth).cpu().float()
    D = torch.where(torch.isfinite(D) & (D > 0), D, 0.0)
    K = torch.as_tensor(intrinsics).cpu().float()
    C = torch.as_tensor(cam_from_world).cpu().double()
    S, _, H, W = img.shape
    if D.shape != (S, H, W) or K.shape != (S, 3, 3) or C.shape != (S, 3, 4):
        raise ValueError(f"refine_poses: images {tuple(img.shape)}, depth {tuple(D.shape)}, intrinsics "
                         f"{tuple(K.shape)} and cam_from_world {tuple(C.shape)} do not fit together")
    if len(iters) != levels:
        raise ValueError(f"refine_poses: {levels} levels need {levels} iteration counts, got {iters}")
    if not gaps or min(gaps) < 1 or 1 not in gaps:
        raise ValueError(f"refine_poses: gaps must include 1 (the neighbouring pairs), got {gaps}")
    Tw = torch.eye(4, dtype=torch.float64).repeat(S, 1, 1)
    Tw[:, :3] = C
    if S < 2:
        return Refinement(C.numpy(), np.zeros(0, bool), np.zeros(0), np.zeros(0), time.perf_counter() - t0)
    grey = (img * torch.tensor(_GREY)[None, :, None, None]).sum(1, keepdim=True)
    # acceptance on all of frame i's pixels at the finest level that took steps (full size by default)
    finest = min(k for k in range(levels) if iters[levels - 1 - k] > 0) if any(iters) else 0
    fine = _level(grey, D, K, max(1, H >> finest), max(1, W >> finest))

    def refine_pairs(i, j, T_start):
        T_net = Tw[j] @ torch.linalg.inv(Tw[i])  # camera i -> camera j, the network's
        T = _align(grey, D, K, i, j, T_start.clone(), levels, iters, max_points, huber, tol)
        g, d, Kl = fine
        before, after = _costs(_lift(d[i], Kl[i]), d[i].reshape(len(i), -1) > 0, g[i].reshape(len(i), -1),
                               g[j], T_net, T, Kl[j], clip)
        accepted = torch.isfinite(T).all(dim=(1, 2)) & (after < before)
        return torch.where(accepted[:, None, None], T, T_net), accepted, before, after

    i = torch.arange(S - 1)
    j = i + 1
    rel, accepted, before, after = refine_pairs(i, j, Tw[j] @ torch.linalg.inv(Tw[i]))
    chain = [Tw[0]]
    for k in range(S - 1):
        chain.append(rel[k] @ chain[-1])
    out = torch.stack(chain)
    edges = [(i, j, rel, accepted, before, after)]
    for gap in sorted(set(gaps) - {1}):
        if gap >= S:
            continue
        gi = torch.arange(S - gap)
        gj = gi + gap
        T_chain, T_net = out[gj] @ torch.linalg.inv(out[gi]), Tw[gj] @ torch.linalg.inv(Tw[gi])
        g, d, Kl = fine
        c_chain, c_net = _costs(_lift(d[gi], Kl[gi]), d[gi].reshape(len(gi), -1) > 0, g[gi].reshape(len(gi), -1),
                                g[gj], T_chain, T_net, Kl[gj], clip)
        start = torch.where((c_net < c_chain)[:, None, None], T_net, T_chain)  # the better of the two
        edges.append((gi, gj, *refine_pairs(gi, gj, start)))
    if len(edges) > 1:
        keep = [torch.ones(S - 1, dtype=torch.bool)] + [e[3] for e in edges[1:]]  # neighbours keep the graph whole
        ei, ej, erel = (torch.cat([e[n][k] for e, k in zip(edges, keep)]) for n in range(3))
        valid = D[D > 0]
        scale = float(valid.median()) if valid.numel() else 1.0
        # pairs further apart constrain rotations only: their translations, from frame i's depth over a
        # longer baseline, disagreed with the chain's and lowered held-out RTA@15 (docs/model-card.md)
        out = pose_graph(out, ei, ej, erel, scale, trans_weight=(ej - ei == 1).double())
    accepted, before, after = (torch.cat([e[n] for e in edges]) for n in (3, 4, 5))
    return Refinement(out[:, :3].numpy(), accepted.numpy(), before.numpy(), after.numpy(), time.perf_counter() - t0)
