"""Pose encodings, quaternions, unprojection and Plücker rays."""

import math

import torch

from model.geometry import (
    cam_points_from_depth,
    cameras_from_pose_encoding,
    invert_rigid,
    mat_to_quat,
    plucker_rays,
    pose_encoding_from_cameras,
    quat_to_mat,
    world_points_from_cam_points,
    world_points_from_depth,
)


def _random_cameras(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, 3:4] < 0, -q, q)
    t = torch.randn(n, 3, generator=g, dtype=torch.float64) * 3
    R = quat_to_mat(q)
    return q, R, torch.cat([R, t[:, :, None]], dim=-1)


def test_quat_to_mat_is_a_rotation():
    _, R, _ = _random_cameras()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64))


def test_quaternion_round_trip_including_near_180_degrees():
    q, R, _ = _random_cameras()
    torch.testing.assert_close(mat_to_quat(R), q)
    # rotations by ~pi about each axis, where the w-based formula is ill-conditioned
    axes = torch.eye(3, dtype=torch.float64)
    angle = math.pi - 1e-9
    qs = torch.cat([axes * math.sin(angle / 2), torch.full((3, 1), math.cos(angle / 2), dtype=torch.float64)], -1)
    torch.testing.assert_close(quat_to_mat(mat_to_quat(quat_to_mat(qs))), quat_to_mat(qs))


def test_pose_encoding_round_trip():
    _, _, ext = _random_cameras(8)
    H, W = 294, 518
    K = torch.zeros(8, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = torch.linspace(300, 700, 8, dtype=torch.float64)
    K[:, 1, 1] = torch.linspace(280, 650, 8, dtype=torch.float64)
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = W / 2, H / 2, 1
    enc = pose_encoding_from_cameras(ext[None], K[None], (H, W))
    assert enc.shape == (1, 8, 9)
    ext2, K2 = cameras_from_pose_encoding(enc, (H, W))
    torch.testing.assert_close(ext2[0], ext)
    torch.testing.assert_close(K2[0], K)


def test_depth_unprojection_and_world_points():
    _, _, ext = _random_cameras(2)
    K = torch.tensor([[100.0, 0, 8], [0, 120.0, 6], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    depth = torch.rand(2, 12, 16, dtype=torch.float64) + 1
    cam = cam_points_from_depth(depth, K)
    assert cam.shape == (2, 12, 16, 3)
    # projecting camera points back gives the pixel grid
    u = cam[..., 0] / cam[..., 2] * 100 + 8
    v = cam[..., 1] / cam[..., 2] * 120 + 6
    torch.testing.assert_close(u[0, 0], torch.arange(16, dtype=torch.float64) + 0.5)  # pixel centres
    torch.testing.assert_close(v[0, :, 0], torch.arange(12, dtype=torch.float64) + 0.5)
    legacy = cam_points_from_depth(depth, K, pixel_offset=0.0)  # the published training code's grid
    torch.testing.assert_close(legacy[0, 0, :, 0] / legacy[0, 0, :, 2] * 100 + 8, torch.arange(16, dtype=torch.float64))
    world = world_points_from_depth(depth, ext, K)
    torch.testing.assert_close(world, world_points_from_cam_points(cam, ext))
    back = (ext[:, None, None, :3, :3] @ world.unsqueeze(-1)).squeeze(-1) + ext[:, None, None, :3, 3]
    torch.testing.assert_close(back, cam)
    torch.testing.assert_close(invert_rigid(invert_rigid(ext)), ext)


def test_plucker_rays():
    _, _, ext = _random_cameras(3)
    K = torch.tensor([[50.0, 0, 14], [0, 50.0, 7], [0, 0, 1]], dtype=torch.float64).expand(3, 3, 3)
    rays = plucker_rays(ext, K, (14, 28))
    assert rays.shape == (3, 9, 14, 28)
    o, d, m = rays[:, :3], rays[:, 3:6], rays[:, 6:]
    centre = invert_rigid(ext)[..., :3, 3]
    torch.testing.assert_close(o, centre[:, :, None, None].expand_as(o))
    torch.testing.assert_close(d.norm(dim=1), torch.ones(3, 14, 28, dtype=torch.float64))
    torch.testing.assert_close(m, torch.cross(o, d, dim=1))
    # a point 2 units along a ray projects back to that ray's pixel centre
    p = o + 2 * d
    pc = (ext[:, :3, :3] @ p.flatten(2)).transpose(1, 2) + ext[:, None, :3, 3]
    u = pc[..., 0] / pc[..., 2] * 50 + 14
    torch.testing.assert_close(u.reshape(3, 14, 28)[:, 0], (torch.arange(28, dtype=torch.float64) + 0.5).expand(3, 28))
