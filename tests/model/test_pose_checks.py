"""Pose checks on hand-made cameras: every kind of bad pose is named, a clean set passes."""

import numpy as np
import pytest

from errors import PoseCheckError
from model.pose_checks import (
    PoseCheckReport,
    best_depth_scale,
    camera_centres,
    candidate_poses,
    check_convention,
    check_given_poses,
    compare_poses,
)
from model.synthetic import generate_sample

SIZE = (56, 84)


@pytest.fixture(scope="module")
def street():
    return generate_sample(11, "street", 8, *SIZE)


def _check(cams, K, names=None):
    names = names or [f"{i:03d}.png" for i in range(len(cams))]
    return check_given_poses(cams, K, [SIZE] * len(cams), names, "coll/cameras.json")


def test_clean_poses_pass(street):
    report = _check(street["cam_from_world"], street["intrinsics"])
    assert report.poses_given and report.num_views == 8 and report.camera_extent > 1


@pytest.mark.parametrize("break_it, message", [
    (lambda c, K: c.__setitem__((2, 0, 3), np.nan), "camera of 002.png: non-finite values"),
    (lambda c, K: c.__setitem__((3, slice(None, 3), slice(None, 3)), 2 * c[3, :3, :3]), "003.png: rotation is not"),
    (lambda c, K: c.__setitem__((1, 1, slice(None, 3)), -c[1, 1, :3]), "det -1.000 (a reflection)"),
    (lambda c, K: K.__setitem__((4, 0, 0), -10.0), "camera of 004.png: focal lengths must be positive"),
    (lambda c, K: K.__setitem__((5, 0, 2), 200.0), "camera of 005.png: principal point (200, "),
    (lambda c, K: c.__setitem__(6, c[2]), "cameras of 002.png and 006.png are duplicates"),
])
def test_bad_poses_are_named(street, break_it, message):
    cams, K = street["cam_from_world"].copy(), street["intrinsics"].copy()
    break_it(cams, K)
    with pytest.raises(PoseCheckError, match="coll/cameras.json") as info:
        _check(cams, K)
    assert message in str(info.value)


def test_no_baseline_is_named(street):
    cams = street["cam_from_world"].copy()
    C = camera_centres(cams)
    cams[:, :, 3] = -np.einsum("nab,b->na", cams[:, :3, :3], C[0])  # every camera at the first one's centre
    with pytest.raises(PoseCheckError, match="all 8 cameras are at the same position: no baseline"):
        _check(cams, street["intrinsics"])


def test_candidates_recover_the_truth_from_a_mixup(street):
    cams = street["cam_from_world"]
    T = np.tile(np.eye(4), (8, 1, 1))
    T[:, :3] = cams
    c2w = np.linalg.inv(T)[:, :3]
    np.testing.assert_allclose(candidate_poses(c2w)["camera_to_world"], cams, atol=1e-9)
    gl = (np.diag([1.0, -1, -1, 1]) @ T)[:, :3]
    np.testing.assert_allclose(candidate_poses(gl)["opengl_axes"], cams, atol=1e-9)


def test_depth_scale_is_found():
    """Depth known up to a factor 0.37: the consistency search finds the factor back. (Not on a street
    walk: lateral motion along flat facades leaves depth maps consistent at any large scale.)"""
    orbit = generate_sample(11, "orbit", 8, *SIZE)
    cams, K, depth = orbit["cam_from_world"], orbit["intrinsics"], orbit["depth"]
    score, scale = best_depth_scale(depth * 0.37, cams, K, guess=2.0)
    assert score > 0.3
    assert abs(scale - 1 / 0.37) / (1 / 0.37) < 0.15


def test_agreement_counts_match_a_direct_reprojection():
    """The compiled per-pixel loop against a float64 numpy reprojection of the same pairs: the same
    agreeing and violating pixels (up to a few on the tolerance edges) at every scale."""
    from model.reprojection_cpu import agreement_counts

    orbit = generate_sample(12, "orbit", 4, 18, 27)
    depth, cams, K = orbit["depth"], orbit["cam_from_world"], orbit["intrinsics"]
    S, H, W = depth.shape
    pairs = [(0, 1), (1, 0), (1, 3), (2, 1)]
    scales = np.array([0.5, 0.9, 1.0, 1.1, 2.0])
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    rays, offsets, K_j, expected = [], [], [], np.zeros((len(scales), len(pairs), 2), np.int64)
    for p, (i, j) in enumerate(pairs):
        ray = np.stack([(u - K[i, 0, 2]) / K[i, 0, 0], (v - K[i, 1, 2]) / K[i, 1, 1], np.ones_like(u)], -1)
        R_rel = cams[j, :, :3] @ cams[i, :, :3].T
        off = cams[j, :, 3] - R_rel @ cams[i, :, 3]
        rays.append((ray @ R_rel.T).reshape(-1, 3))
        offsets.append(off)
        K_j.append([K[j, 0, 0], K[j, 1, 1], K[j, 0, 2], K[j, 1, 2]])
        for n, s in enumerate(scales):
            X = rays[-1] * (s * depth[i].reshape(-1, 1)) + off
            z = X[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uj, vj = K[j, 0, 0] * X[:, 0] / z + K[j, 0, 2], K[j, 1, 1] * X[:, 1] / z + K[j, 1, 2]
            ok = (depth[i].reshape(-1) > 0) & (z > 1e-9) & (uj >= 0) & (uj < W) & (vj >= 0) & (vj < H)
            dj = np.zeros_like(z)
            dj[ok] = s * depth[j][vj[ok].astype(int), uj[ok].astype(int)]
            ok &= dj > 0
            expected[n, p] = [(ok & (np.abs(z - dj) <= 0.05 * dj)).sum(), (ok & (z < 0.9 * dj)).sum()]
    counts = agreement_counts(np.stack(rays), np.stack(offsets), np.array(K_j), depth[[i for i, _ in pairs]].reshape(
        len(pairs), -1), depth[[j for _, j in pairs]].reshape(len(pairs), -1), scales, (H, W), 0.05)
    assert counts.shape == expected.shape and expected[..., 0].max() > 50 and expected[..., 1].max() > 5
    assert np.abs(counts - expected).max() <= 2


@pytest.mark.parametrize("mixup, name", [("camera_to_world", "camera-to-world"), ("opengl_axes", "OpenGL camera axes")])
def test_convention_mixups_are_caught(street, mixup, name):
    cams, K, depth = street["cam_from_world"], street["intrinsics"], street["depth"]
    T = np.tile(np.eye(4), (8, 1, 1))
    T[:, :3] = cams
    wrong = {"camera_to_world": np.linalg.inv(T), "opengl_axes": np.diag([1.0, -1, -1, 1]) @ T}[mixup][:, :3]
    pred = cams.copy()
    pred[:, :, 3] *= 0.37  # predictions share one unknown scale with the predicted depth
    report = PoseCheckReport(poses_given=True, source="coll/cameras.json")
    with pytest.raises(PoseCheckError, match=f"coll/cameras.json: the cameras do not look at the scene.*{name}"):
        check_convention(depth * 0.37, pred, wrong, K, "coll/cameras.json", report)
    ok = check_convention(depth * 0.37, pred, cams, K, "coll/cameras.json", report)
    assert ok.convention == "as given" and ok.convention_scores["as given"]["depth_agreement"] > 0.5


def test_compare_poses_reports_and_flags(street):
    cams = street["cam_from_world"]
    pred = cams.copy()
    pred[:, :, 3] *= 0.5
    bad = 5
    angle = np.radians(40)
    Rz = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    centre = camera_centres(pred[bad:bad + 1])[0]
    pred[bad, :3, :3] = Rz @ pred[bad, :3, :3]
    pred[bad, :3, 3] = -pred[bad, :3, :3] @ centre + np.array([0.0, 0.0, 3.0])  # turned and moved 3 m (1.5 pred)
    report = PoseCheckReport(poses_given=True, camera_extent=float(np.ptp(camera_centres(cams), axis=0).max()))
    report = compare_poses(pred, cams, float(np.median(street["depth"][street["depth"] > 0])) / 2, report)
    assert report.flagged.tolist() == [i == bad for i in range(8)]
    assert report.rotation_error_deg[bad] == pytest.approx(40, abs=1)
    assert report.position_error[bad] == pytest.approx(6.0, rel=0.05)
    assert np.delete(report.position_error, bad).max() < 1e-6
    assert abs(report.sim3_scale - 2.0) < 0.1
    assert report.to_dict()["num_flagged"] == 1
