"""Training losses after VGGT / ZipMap (arXiv 2503.11651 Sec. 3.4, arXiv 2603.04385 Sec. 4).

Ground truth is first normalised by the scene (:func:`normalize_scene`): every camera and point is
expressed in the first camera's frame and divided by the mean distance of the valid points to its
centre, so the network learns one scale convention for all scenes.

- Camera: L1 between predicted and ground-truth pose encodings (translation, quaternion, fields of
  view; focal weight 0.5), summed over the refinement iterations with weights ``gamma^(K-1-k)``.
- Depth: confidence-weighted L1, ``c |d - d*| - alpha log c``, plus a multi-scale gradient term on
  the residual (sharp edges), over valid pixels.
- Local points: L1 plus the same gradient term (the point head has no confidence).
- Reference matches (only with the optional ``camera_ref_match`` input): cross-entropy of each
  patch's soft match in the reference frame against the patch its ground-truth 3-D point lands in.
"""

from __future__ import annotations

import torch

from ..geometry import cam_points_from_depth, invert_rigid, pose_encoding_from_cameras


def normalize_scene(cam_from_world: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Express a sample ``[B, S, 3, 4]`` / ``[B, S, H, W]`` relative to its first camera, unit scale.

    Returns (cam_from_world, depth, local points ``[B, S, H, W, 3]``), all divided by the mean
    distance between the first camera's centre and the valid world points.
    """
    first_world_from_cam = invert_rigid(cam_from_world[:, :1])  # [B, 1, 3, 4]
    R0, t0 = first_world_from_cam[..., :3, :3], first_world_from_cam[..., :3, 3:]
    R, t = cam_from_world[..., :3, :3], cam_from_world[..., :3, 3:]
    rel = torch.cat([R @ R0, R @ t0 + t], dim=-1)  # cam_from_first
    local = cam_points_from_depth(depth, intrinsics)  # [B, S, H, W, 3]
    # points in the first camera's frame: first_from_cam = inverse(rel)
    first_from_cam = invert_rigid(rel)[:, :, None, None]
    pts = (first_from_cam[..., :3, :3] @ local.unsqueeze(-1)).squeeze(-1) + first_from_cam[..., :3, 3]
    valid = (depth > 0).unsqueeze(-1)
    dist = (pts.norm(dim=-1, keepdim=True) * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    scale = dist.clamp(min=1e-6).view(-1, 1, 1, 1)
    rel = torch.cat([rel[..., :3], rel[..., 3:] / scale], dim=-1)
    return rel, depth / scale, local / scale.unsqueeze(-1)


def camera_loss(pred_list: list[torch.Tensor], gt_pose_enc: torch.Tensor, gamma: float = 0.6,
                focal_weight: float = 0.5) -> torch.Tensor:
    K = len(pred_list)
    total = gt_pose_enc.new_zeros(())
    for k, pred in enumerate(pred_list):
        err = (pred - gt_pose_enc).abs()
        term = err[..., :3].mean() + err[..., 3:7].mean() + focal_weight * err[..., 7:].mean()
        total = total + gamma ** (K - 1 - k) * term
    return total


def gradient_loss(residual: torch.Tensor, valid: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Mean absolute spatial gradient of ``residual`` ``[N, H, W, C]`` over valid neighbours, at
    ``scales`` resolutions (stride 1, 2, 4)."""
    total = residual.new_zeros(())
    for s in range(scales):
        r, v = residual[:, :: 2 ** s, :: 2 ** s], valid[:, :: 2 ** s, :: 2 ** s]
        vx = v[:, :, 1:] & v[:, :, :-1]
        vy = v[:, 1:] & v[:, :-1]
        gx = (r[:, :, 1:] - r[:, :, :-1]).abs().sum(-1)
        gy = (r[:, 1:] - r[:, :-1]).abs().sum(-1)
        total = total + (gx * vx).sum() / vx.sum().clamp(min=1) + (gy * vy).sum() / vy.sum().clamp(min=1)
    return total / scales


def depth_loss(pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, alpha: float = 0.2,
               grad_weight: float = 1.0) -> torch.Tensor:
    """``pred`` ``[B, S, H, W, 1]``, ``conf`` ``[B, S, H, W]``, ``gt`` ``[B, S, H, W]`` (0 = no data)."""
    valid = gt > 0
    res = (pred[..., 0] - gt).unsqueeze(-1)
    l1 = res.abs()[..., 0]
    conf_term = (conf * l1 - alpha * torch.log(conf))[valid].mean()
    grad = gradient_loss((res * conf.unsqueeze(-1)).flatten(0, 1), valid.flatten(0, 1))
    return conf_term + grad_weight * grad


def point_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, grad_weight: float = 1.0,
               ) -> torch.Tensor:
    """``pred``, ``gt`` ``[B, S, H, W, 3]``; ``valid`` ``[B, S, H, W]``."""
    res = pred - gt
    l1 = res.abs().sum(-1)[valid].mean()
    return l1 + grad_weight * gradient_loss(res.flatten(0, 1), valid.flatten(0, 1))


def match_targets(cam_from_world: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor, patch: int,
                  rel_tol: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Which reference patch each patch shows, from ground truth: ``(target, valid)``, each ``[B, S, h*w]``.

    The pixel at the centre of patch i of frame s is lifted with its depth, moved into frame 0 and
    projected; ``target`` is the index of the frame-0 patch it lands in. ``valid`` holds where the pixel
    has depth, lands inside frame 0 in front of its camera, and agrees (within ``rel_tol``) with frame
    0's depth there, i.e. is not hidden from it. Inputs as in :func:`normalize_scene` (metres or not:
    only projections are used); frame 0's own patches map to themselves.
    """
    B, S, H, W = depth.shape
    h, w = H // patch, W // patch
    dt = torch.float64
    rows = torch.arange(h, device=depth.device) * patch + patch // 2
    cols = torch.arange(w, device=depth.device) * patch + patch // 2
    d = depth[:, :, rows][:, :, :, cols].to(dt)  # [B, S, h, w]
    v, u = torch.meshgrid(rows.to(dt) + 0.5, cols.to(dt) + 0.5, indexing="ij")
    K = intrinsics.to(dt)
    x = (u - K[..., 0, 2, None, None]) / K[..., 0, 0, None, None]
    y = (v - K[..., 1, 2, None, None]) / K[..., 1, 1, None, None]
    cam = torch.stack([x * d, y * d, d], -1)  # [B, S, h, w, 3], camera s
    T = cam_from_world.to(dt)
    R, t = T[..., :3, :3], T[..., :3, 3]
    world = torch.einsum("bsji,bshwj->bshwi", R, cam - t[:, :, None, None])  # R^T (X - t)
    X0 = torch.einsum("bij,bshwj->bshwi", R[:, 0], world) + t[:, 0, None, None, None]
    z0 = X0[..., 2]
    zs = z0.clamp_min(1e-9)
    u0 = K[:, 0, None, None, None, 0, 0] * X0[..., 0] / zs + K[:, 0, None, None, None, 0, 2]
    v0 = K[:, 0, None, None, None, 1, 1] * X0[..., 1] / zs + K[:, 0, None, None, None, 1, 2]
    inside = (d > 0) & (z0 > 1e-9) & (u0 >= 0) & (u0 < W) & (v0 >= 0) & (v0 < H)
    pu, pv = u0.clamp(0, W - 1).floor().long(), v0.clamp(0, H - 1).floor().long()
    d0 = torch.gather(depth[:, 0].to(dt).flatten(1), 1, (pv * W + pu).flatten(1)).view(pu.shape)
    valid = inside & (d0 > 0) & ((d0 - z0).abs() <= rel_tol * d0)
    target = (pv // patch).clamp(max=h - 1) * w + (pu // patch).clamp(max=w - 1)
    return target.flatten(2), valid.flatten(2)


def match_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Cross-entropy of the reference matches ``[B, S, h*w, h*w]`` against :func:`match_targets`,
    over the non-reference frames' patches that have a target (0 when none has)."""
    B, S, n, _ = logits.shape
    H, W = batch["images"].shape[-2:]
    patch = round((H * W / n) ** 0.5)
    target, valid = match_targets(batch["cam_from_world"], batch["depth"], batch["intrinsics"], patch)
    valid[:, 0] = False  # the reference matching itself teaches nothing
    if not valid.any():
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[valid].float(), target[valid])


def total_loss(out: dict, batch: dict, weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict]:
    """All terms for one batch ``{"images", "cam_from_world", "intrinsics", "depth"}`` (metres)."""
    w = {"camera": 1.0, "depth": 1.0, "points": 1.0, "match": 1.0, **(weights or {})}
    H, W = batch["images"].shape[-2:]
    cams, depth, local = normalize_scene(batch["cam_from_world"], batch["depth"], batch["intrinsics"])
    gt_enc = pose_encoding_from_cameras(cams, batch["intrinsics"], (H, W))
    terms = {}
    if "pose_enc_list" in out:
        terms["camera"] = camera_loss(out["pose_enc_list"], gt_enc)
    if "depth" in out:
        terms["depth"] = depth_loss(out["depth"], out["depth_conf"], depth)
    if "local_points" in out:
        terms["points"] = point_loss(out["local_points"], local, depth > 0)
    if "ref_match_logits" in out:
        terms["match"] = match_loss(out["ref_match_logits"], batch)
    loss = sum(w[k] * v for k, v in terms.items())
    return loss, {k: float(v.detach()) for k, v in terms.items()}


__all__ = ["camera_loss", "depth_loss", "point_loss", "gradient_loss", "match_loss", "match_targets", "normalize_scene",
           "total_loss"]
