"""Training losses after VGGT / ZipMap (arXiv 2503.11651 Sec. 3.4, arXiv 2603.04385 Sec. 4).

Ground truth is first normalised by the scene (:func:`normalize_scene`): every camera and point is
expressed in the first camera's frame and divided by the mean distance of the valid points to its
centre, so the network learns one scale convention for all scenes.

- Camera: L1 between predicted and ground-truth pose encodings (translation, quaternion, fields of
  view; focal weight 0.5), summed over the refinement iterations with weights ``gamma^(K-1-k)``.
- Depth: confidence-weighted L1, ``c |d - d*| - alpha log c``, plus a multi-scale gradient term on
  the residual (sharp edges), over valid pixels.
- Local points: L1 plus the same gradient term (the point head has no confidence).
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


def total_loss(out: dict, batch: dict, weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict]:
    """All terms for one batch ``{"images", "cam_from_world", "intrinsics", "depth"}`` (metres)."""
    w = {"camera": 1.0, "depth": 1.0, "points": 1.0, **(weights or {})}
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
    loss = sum(w[k] * v for k, v in terms.items())
    return loss, {k: float(v.detach()) for k, v in terms.items()}


__all__ = ["camera_loss", "depth_loss", "point_loss", "gradient_loss", "normalize_scene", "total_loss"]
