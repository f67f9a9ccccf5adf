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
