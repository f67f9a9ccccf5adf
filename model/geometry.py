"""Camera geometry: pose encodings, quaternions, depth unprojection and Plücker rays.

Convention (one paragraph, repeated in the README): cameras are OpenCV (x right, y down,
z forward); an extrinsic ``[R | t]`` (``...x3x4``) maps world points to camera points
(``cam_from_world``: ``X_cam = R X_world + t``); intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``
are in pixels. Quaternions are ``(x, y, z, w)``, scalar last, with ``w >= 0``.

The pose encoding ``absT_quaR_FoV`` (VGGT, ZipMap) is ``[t (3), q (4), fov_h, fov_w]`` with
``fov_h = 2 atan(H / (2 fy))`` and ``fov_w = 2 atan(W / (2 fx))``; decoding puts the principal
point at the image centre.

Pixel centres: pixel (column u, row v) is the point ``(u + 0.5, v + 0.5)`` in image coordinates, for
unprojection and for ray maps alike (the collection format's convention). The published training
code unprojects depth at ``(u, v)``; ``pixel_offset=0.0`` reproduces that.
"""

from __future__ import annotations

import torch


def quat_to_mat(q: torch.Tensor) -> torch.Tensor:
    """Quaternions ``[..., 4]`` (xyzw, any norm) -> rotation matrices ``[..., 3, 3]``."""
    x, y, z, w = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    m = torch.stack([
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ], dim=-1)
    return m.reshape(*q.shape[:-1], 3, 3)


def mat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` (xyzw, ``w >= 0``).

    Of the four algebraically equivalent formulas (each divides by one of 4w^2, 4x^2, 4y^2, 4z^2),
    the one with the largest denominator is used, which is stable for every rotation.
    """
    m = R.reshape(*R.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    four_sq = torch.stack([
        1 + m00 + m11 + m22,  # 4 w^2
        1 + m00 - m11 - m22,  # 4 x^2
        1 - m00 + m11 - m22,  # 4 y^2
        1 - m00 - m11 + m22,  # 4 z^2
    ], dim=-1)
    # Each row: (w, x, y, z) times 4 * (that row's component).
    cand = torch.stack([
        torch.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], dim=-1),
    ], dim=-2)
    root = four_sq.clamp(min=0).sqrt()
    cand = cand / (2 * root.clamp(min=0.1)).unsqueeze(-1)
    best = root.argmax(dim=-1, keepdim=True)
    wxyz = torch.gather(cand, -2, best.unsqueeze(-1).expand(*best.shape, 4)).squeeze(-2)
    q = torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)
    return torch.where(q[..., 3:4] < 0, -q, q)


def pose_encoding_from_cameras(cam_from_world: torch.Tensor, intrinsics: torch.Tensor,
                               image_hw: tuple[int, int]) -> torch.Tensor:
    """``[..., 3, 4]`` extrinsics and ``[..., 3, 3]`` intrinsics -> ``[..., 9]`` pose encodings."""
    H, W = image_hw
    t = cam_from_world[..., :3, 3]
    q = mat_to_quat(cam_from_world[..., :3, :3])
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    return torch.cat([t, q, fov_h[..., None], fov_w[..., None]], dim=-1)


def cameras_from_pose_encoding(pose_enc: torch.Tensor, image_hw: tuple[int, int],
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., 9]`` pose encodings -> (``cam_from_world`` ``[..., 3, 4]``, intrinsics ``[..., 3, 3]``)."""
    H, W = image_hw
    R = quat_to_mat(pose_enc[..., 3:7])
    extrinsics = torch.cat([R, pose_enc[..., :3, None]], dim=-1)
    fy = (H / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    fx = (W / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    K = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    K[..., 0, 0], K[..., 1, 1] = fx, fy
    K[..., 0, 2], K[..., 1, 2] = W / 2, H / 2
    K[..., 2, 2] = 1.0
    return extrinsics, K


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[..., 3, 4]`` (e.g. ``world_from_cam`` from ``cam_from_world``)."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    return torch.cat([Rt, -Rt @ t], dim=-1)


def cam_points_from_depth(depth: torch.Tensor, intrinsics: torch.Tensor, pixel_offset: float = 0.5) -> torch.Tensor:
    """Depth ``[..., H, W]`` (z along the optical axis) -> camera-frame points ``[..., H, W, 3]``."""
    H, W = depth.shape[-2:]
    v, u = torch.meshgrid(torch.arange(H, dtype=depth.dtype, device=depth.device) + pixel_offset,
                          torch.arange(W, dtype=depth.dtype, device=depth.device) + pixel_offset, indexing="ij")
    K = intrinsics[..., None, None, :, :]
    x = (u - K[..., 0, 2]) / K[..., 0, 0] * depth
    y = (v - K[..., 1, 2]) / K[..., 1, 1] * depth
    return torch.stack([x, y, depth], dim=-1)


def world_points_from_depth(depth: torch.Tensor, cam_from_world: torch.Tensor, intrinsics: torch.Tensor,
                            pixel_offset: float = 0.5) -> torch.Tensor:
    """Depth ``[..., H, W]`` -> world points ``[..., H, W, 3]`` through ``cam_from_world`` ``[..., 3, 4]``."""
    cam = cam_points_from_depth(depth, intrinsics, pixel_offset)
    world_from_cam = invert_rigid(cam_from_world)[..., None, None, :, :]
    return (world_from_cam[..., :3, :3] @ cam.unsqueeze(-1)).squeeze(-1) + world_from_cam[..., :3, 3]


def world_points_from_cam_points(points: torch.Tensor, cam_from_world: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``[..., H, W, 3]`` (e.g. the ``local_points`` output) -> world points."""
    world_from_cam = invert_rigid(cam_from_world)[..., None, None, :, :]
    return (world_from_cam[..., :3, :3] @ points.unsqueeze(-1)).squeeze(-1) + world_from_cam[..., :3, 3]


def plucker_rays(cam_from_world: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int],
                 ) -> torch.Tensor:
    """Ray conditions ``[..., 9, H, W]``: origin, unit direction and origin x direction (world frame).

    This is the ``plucker_and_common_origin`` condition of the state-query variant; rays pass
    through pixel centres. Cameras are ``cam_from_world`` ``[..., 3, 4]`` with intrinsics in pixels
    of an ``image_hw`` image.
    """
    H, W = image_hw
    world_from_cam = invert_rigid(cam_from_world)
    v, u = torch.meshgrid(torch.arange(H, dtype=intrinsics.dtype, device=intrinsics.device),
                          torch.arange(W, dtype=intrinsics.dtype, device=intrinsics.device), indexing="ij")
    K = intrinsics[..., None, None, :, :]
    x = (u + 0.5 - K[..., 0, 2]) / K[..., 0, 0]  # [..., H, W]
    y = (v + 0.5 - K[..., 1, 2]) / K[..., 1, 1]
    x, y = torch.broadcast_tensors(x, y)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [..., H, W, 3]
    R = world_from_cam[..., None, None, :3, :3]
    d = (R @ d_cam.unsqueeze(-1)).squeeze(-1)
    d = d / d.norm(dim=-1, keepdim=True)
    o = world_from_cam[..., None, None, :3, 3].expand_as(d)
    rays = torch.cat([o, d, torch.cross(o, d, dim=-1)], dim=-1)  # [..., H, W, 9]
    return rays.movedim(-1, -3)
