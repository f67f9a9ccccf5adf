"""Evaluation metrics on hand-made cases with known answers."""

import numpy as np
import pytest

from model.evaluation.metrics import (
    camera_centres,
    depth_metrics,
    pose_metrics,
    trajectory_and_points,
    umeyama_sim3,
)


def _rot(axis, deg):
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    a = np.radians(deg)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _cameras(S=5, seed=0):
    rng = np.random.default_rng(seed)
    cams = []
    for i in range(S):
        R = _rot(rng.normal(size=3), rng.uniform(10, 60))
        C = np.array([i * 1.0, rng.uniform(-1, 1), rng.uniform(0, 2)])
        cams.append(np.concatenate([R, (-R @ C)[:, None]], axis=1))
    return np.stack(cams)


def _similarity(cams, s, R, t):
    """The same cameras seen in a world moved by X' = s R X + t."""
    out = []
    for T in cams:
        Rc, tc = T[:, :3], T[:, 3]
        C = -Rc.T @ tc
        R2 = Rc @ R.T
        out.append(np.concatenate([R2, (-R2 @ (s * R @ C + t))[:, None]], axis=1))
    return np.stack(out)


def test_depth_perfect_scaled_and_known_error():
    gt = np.random.default_rng(0).uniform(1, 10, (2, 8, 8)).astype(np.float32)
    gt[0, 0, 0] = 0  # no data
    assert depth_metrics(gt.copy(), gt) == {"depth_abs_rel": 0.0, "depth_delta1": 1.0}
    m = depth_metrics(3.5 * gt, gt)  # a global scale is aligned away
    assert m["depth_abs_rel"] < 1e-6 and m["depth_delta1"] == 1.0
    gt = np.ones((1, 10, 10))
    pred = np.ones((1, 10, 10))
    pred[0, :4] = 2.0  # 40% of pixels twice too far; median stays 1
    m = depth_metrics(pred, gt)
    assert m["depth_abs_rel"] == pytest.approx(0.4) and m["depth_delta1"] == pytest.approx(0.6)


def test_pose_perfect_invariant_and_known_rotation_error():
    gt = _cameras(4)
    assert pose_metrics(gt, gt) == {"rra_15": 1.0, "rta_15": 1.0, "auc_30": 1.0}
    moved = _similarity(gt, 2.5, _rot([1, 2, 3], 40), np.array([3.0, -1, 2]))
    m = pose_metrics(moved, gt)
    assert m["rra_15"] == 1.0 and m["rta_15"] == 1.0 and m["auc_30"] > 0.999
    bad = gt.copy()
    bad[2, :, :3] = _rot([0, 0, 1], 20) @ bad[2, :, :3]  # rotate camera 2 by 20 degrees in place
    bad[2, :, 3] = _rot([0, 0, 1], 20) @ gt[2, :, 3]  # keep its centre where it was
    np.testing.assert_allclose(camera_centres(bad), camera_centres(gt), atol=1e-9)
    m = pose_metrics(bad, gt)
    assert m["rra_15"] == pytest.approx(0.5)  # the 3 of 6 pairs that involve camera 2 are off by 20 degrees


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    R = _rot([0.3, -1, 0.5], 70)
    s, R2, t = umeyama_sim3(src, 1.7 * src @ R.T + np.array([1.0, 2, 3]))
    assert s == pytest.approx(1.7) and np.allclose(R2, R) and np.allclose(t, [1, 2, 3])


def test_trajectory_and_points_perfect_up_to_similarity_and_known_offset():
    gt = _cameras(6)
    pts = np.random.default_rng(2).uniform(-5, 5, (3000, 3))
    s, R, t = 0.3, _rot([1, 1, 0], 25), np.array([0.5, 0, -2])
    pred = _similarity(gt, s, R, t)
    m = trajectory_and_points(pred, gt, s * pts @ R.T + t, pts, 4.0 * s, 4.0)
    assert m["ate"] < 1e-9 and m["chamfer"] < 1e-6 and m["fscore"] == 1.0
    # every predicted point 5% of the camera extent away from the truth: F-score 0 at the 1% threshold
    extent = np.linalg.norm(camera_centres(gt).max(0) - camera_centres(gt).min(0))
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3), -1).reshape(-1, 3)  # spacing 1 > the shift
    assert 0.05 * extent < 0.5
    m = trajectory_and_points(gt, gt, grid + np.array([0.05 * extent, 0, 0]), grid, 4.0, 4.0)
    assert m["fscore"] == 0.0 and m["chamfer"] == pytest.approx(0.05, rel=1e-3)
