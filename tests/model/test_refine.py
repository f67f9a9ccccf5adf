"""Pose refinement by direct image alignment: recovers true motion from wrong starting poses, keeps the
network's pose where a pair cannot be aligned, checks its inputs."""

import numpy as np
import pytest
import torch

from model.evaluation.metrics import pose_metrics, relative_pose_errors
from model.refine import refine_poses
from model.synthetic import generate_sample


@pytest.fixture(scope="module")
def street():
    return generate_sample(21, "street", 6, 84, 126)


def _identity_poses(S):
    return np.tile(np.eye(4)[:3], (S, 1, 1))


def test_true_depth_recovers_the_motion_from_identity_poses(street):
    """Started from 'every camera at the origin' (the trivial baseline), the refinement finds the
    walk: relative rotations within 1 degree, translation directions within 5 degrees."""
    S = len(street["depth"])
    start = _identity_poses(S)
    rot0, trans0 = relative_pose_errors(start, street["cam_from_world"])
    assert trans0.min() > 30  # the start is far off in translation direction
    result = refine_poses(street["images"], street["depth"], street["intrinsics"], start)
    assert result.accepted.all() and (result.cost_after < result.cost_before).all()
    rot, trans = relative_pose_errors(result.cam_from_world, street["cam_from_world"])
    assert rot.max() < 1.0 and np.median(trans) < 5.0
    assert pose_metrics(result.cam_from_world, street["cam_from_world"])["auc_30"] > 0.8
    np.testing.assert_allclose(result.cam_from_world[0], start[0])  # the first camera stays the world frame


def test_a_pair_that_cannot_be_aligned_keeps_the_network_pose(street):
    S = len(street["depth"])
    start = street["cam_from_world"].copy()
    depth = street["depth"].copy()
    depth[2] = 0.0  # frame 2 has no depth: pair (2, 3) has nothing to align
    result = refine_poses(street["images"], depth, street["intrinsics"], start)
    assert not result.accepted[2] and np.isinf(result.cost_before[2])
    T = np.tile(np.eye(4), (S, 1, 1))
    T[:, :3] = result.cam_from_world
    G = np.tile(np.eye(4), (S, 1, 1))
    G[:, :3] = start
    np.testing.assert_allclose(T[3] @ np.linalg.inv(T[2]), G[3] @ np.linalg.inv(G[2]), atol=1e-9)
    assert result.to_dict()["pairs"] == S - 1


def test_uint8_images_torch_inputs_and_checks(street):
    images = torch.from_numpy((street["images"].transpose(0, 2, 3, 1) * 255).round().astype(np.uint8))
    one = refine_poses(images[:1], street["depth"][:1], street["intrinsics"][:1], street["cam_from_world"][:1])
    assert len(one.accepted) == 0 and np.array_equal(one.cam_from_world, street["cam_from_world"][:1])
    two = refine_poses(images[:2], torch.from_numpy(street["depth"][:2]), street["intrinsics"][:2],
                       _identity_poses(2))
    assert two.cam_from_world.shape == (2, 3, 4) and two.accepted.all()
    with pytest.raises(ValueError, match="do not fit together"):
        refine_poses(images, street["depth"][:2], street["intrinsics"], street["cam_from_world"])
    with pytest.raises(ValueError, match="iteration counts"):
        refine_poses(images, street["depth"], street["intrinsics"], street["cam_from_world"], iters=(3, 3), levels=3)


def test_normal_equations_match_autograd():
    """The compiled loop's Gauss-Newton system against the Jacobian torch's autograd takes through
    ``grid_sample`` for the same residuals (left perturbation: translation, then rotation)."""
    import torch.nn.functional as F

    from model.refine import _so3_exp
    from model.refine_cpu import normal_equations

    rng = np.random.default_rng(3)
    h, w, N = 24, 32, 200
    yy, xx = np.mgrid[0:h, 0:w]
    image = (0.5 + 0.3 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float32)
    gx, gy = np.zeros_like(image), np.zeros_like(image)
    gx[:, 1:-1] = (image[:, 2:] - image[:, :-2]) / 2
    gy[1:-1] = (image[2:] - image[:-2]) / 2
    maps = np.stack([image, gx, gy])[None]  # [1, 3, h, w]
    pts = np.stack([rng.uniform(-0.5, 0.5, N), rng.uniform(-0.4, 0.4, N), rng.uniform(2.0, 3.0, N)], -1)
    ref = rng.uniform(0.2, 0.8, N).astype(np.float32)
    T = np.eye(4)
    T[:3, :3] = _so3_exp(torch.tensor([0.02, -0.03, 0.01], dtype=torch.float64)).numpy()
    T[:3, 3] = [0.05, -0.02, 0.1]
    K = np.array([[30.0, 30.0, 16.0, 12.0]], np.float32)
    H, b, _ = normal_equations(pts[None].astype(np.float32), np.ones((1, N), bool), ref[None], maps, T[None], K,
                               huber=1e9)

    def residuals(xi):
        step = torch.eye(4, dtype=torch.float64)
        step = torch.cat([torch.cat([_so3_exp(xi[3:]), xi[:3, None]], 1), step[3:]], 0)
        M = step @ torch.from_numpy(T)
        X = torch.from_numpy(pts) @ M[:3, :3].T + M[:3, 3]
        u, v = 30.0 * X[:, 0] / X[:, 2] + 16.0, 30.0 * X[:, 1] / X[:, 2] + 12.0
        grid = torch.stack([u * 2 / w - 1, v * 2 / h - 1], -1)[None, None]
        val = F.grid_sample(torch.from_numpy(image).double()[None, None], grid, mode="bilinear",
                            align_corners=False)[0, 0, 0]
        return val - torch.from_numpy(ref).double(), u, v

    r, u, v = residuals(torch.zeros(6, dtype=torch.float64))
    inside = ((u > 1) & (u < w - 1) & (v > 1) & (v < h - 1)).numpy()
    assert inside.mean() > 0.8
    J = torch.autograd.functional.jacobian(lambda xi: residuals(xi)[0], torch.zeros(6, dtype=torch.float64)).numpy()
    # the kernel uses central-difference image gradients, autograd the bilinear patch's slope: close, not equal
    J, r = J[inside], r.numpy()[inside]
    np.testing.assert_allclose(H[0], J.T @ J, rtol=0.15, atol=0.02 * np.abs(J.T @ J).max())
    np.testing.assert_allclose(b[0], J.T @ r, rtol=0.15, atol=0.02 * np.abs(J.T @ r).max())


def _random_poses(S, seed, spread=0.3):
    from model.refine import _so3_exp

    g = torch.Generator().manual_seed(seed)
    T = torch.eye(4, dtype=torch.float64).repeat(S, 1, 1)
    T[:, :3, :3] = _so3_exp(torch.randn(S, 3, generator=g, dtype=torch.float64) * spread)
    T[:, :3, 3] = torch.randn(S, 3, generator=g, dtype=torch.float64)
    return T, g


def _perturbed(T, g, sigma):
    from model.refine import _so3_exp

    N = torch.eye(4, dtype=torch.float64).repeat(len(T), 1, 1)
    N[:, :3, :3] = _so3_exp(torch.randn(len(T), 3, generator=g, dtype=torch.float64) * sigma)
    N[:, :3, 3] = torch.randn(len(T), 3, generator=g, dtype=torch.float64) * sigma
    return N @ T


def _gap_edges(S, max_gap):
    i = torch.cat([torch.arange(S - gap) for gap in range(1, max_gap + 1)])
    j = torch.cat([torch.arange(gap, S) for gap in range(1, max_gap + 1)])
    return i, j


def test_pose_graph_recovers_consistent_poses_and_spreads_drift():
    from model.refine import pose_graph

    S = 12
    truth, g = _random_poses(S, 5)
    i, j = _gap_edges(S, 3)
    rel = truth[j] @ torch.linalg.inv(truth[i])
    start = _perturbed(truth, g, 0.05)
    start[0] = truth[0]  # the first camera is the gauge
    out = pose_graph(start, i, j, rel, scale=1.0)
    np.testing.assert_allclose(out.numpy(), truth.numpy(), atol=1e-9)
    rotations_only = pose_graph(start, i, j, rel, scale=1.0, trans_weight=(j - i == 1).double())
    np.testing.assert_allclose(rotations_only.numpy(), truth.numpy(), atol=1e-9)

    def rotation_error(T):
        return float((T[:, :3, :3] - truth[:, :3, :3]).norm(dim=(1, 2)).mean())

    chain_err, graph_err = [], []
    for _ in range(10):  # noisy relative poses: the graph over gaps 1-3 beats the chain of neighbours
        noisy = _perturbed(rel, g, 0.02)
        chain = [truth[0]]
        for k in range(S - 1):
            chain.append(noisy[k] @ chain[-1])
        chain = torch.stack(chain)
        graph = pose_graph(chain, i, j, noisy, scale=1.0)
        np.testing.assert_allclose(graph[0].numpy(), truth[0].numpy())
        chain_err.append(rotation_error(chain))
        graph_err.append(rotation_error(graph))
    assert np.mean(graph_err) < 0.5 * np.mean(chain_err)


def test_gaps_add_pairs_further_apart(street):
    S = len(street["depth"])
    start = _identity_poses(S)
    result = refine_poses(street["images"], street["depth"], street["intrinsics"], start, gaps=(1, 2))
    assert result.to_dict()["pairs"] == (S - 1) + (S - 2)
    assert result.accepted[: S - 1].all()
    rot, trans = relative_pose_errors(result.cam_from_world, street["cam_from_world"])
    assert rot.max() < 1.0 and np.median(trans) < 5.0
    np.testing.assert_allclose(result.cam_from_world[0], start[0])
    for bad in ((), (2,), (0, 1)):
        with pytest.raises(ValueError, match="gaps"):
            refine_poses(street["images"], street["depth"], street["intrinsics"], start, gaps=bad)
