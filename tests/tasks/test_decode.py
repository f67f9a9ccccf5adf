"""Grid-sampled decoding through the pipeline's own stages and store: ground truth in, surface back out.

The issue's geometry test: a generated collection's ground-truth depth and poses are fed straight
into the decoder (``plan_volume`` + ``decode_volume`` writing chunk by chunk into Zarr); the zero
level of the stored TSDF must lie within one voxel of the true surface (median over crossings).
It runs with a UTM-sized origin too, so the store's coordinates and origin handling are covered.
"""

import numpy as np
import pytest
import torch

from model import fusion
from model.evaluation.metrics import nearest_distances
from model.geometry import world_points_from_depth
from model.placement import Scene, plan_volume, with_origin
from model.pose_checks import PoseCheckReport
from model.synthetic import generate_sample
from storage.zarr_store import ReconstructionStore, open_reconstruction
from tasks.stages import decode_volume


@pytest.mark.parametrize("kind, origin", [("orbit", (0.0, 0.0, 0.0)), ("street", (512_345.0, 5_412_345.0, 312.0))])
def test_tsdf_zero_level_on_the_true_surface(tmp_path, kind, origin):
    sample = generate_sample(7, kind, 12, 84, 126)
    depth = sample["depth"]
    origin = np.asarray(origin)
    world = sample["cam_from_world"]  # the scene in its own frame; shifted by -origin it is the "local" frame
    scene = Scene(names=tuple(f"{i:03d}.png" for i in range(12)),
                  images=np.round(sample["images"].transpose(0, 2, 3, 1) * 255).astype(np.uint8),
                  depth=depth, depth_conf=np.ones_like(depth), cam_from_world=world, predicted_cam_from_world=world,
                  intrinsics=sample["intrinsics"], origin=origin, units="m", crs="EPSG:32633", metric=True,
                  report=PoseCheckReport(poses_given=True))
    plan = plan_volume(scene, max_voxels=64, truncation_voxels=2.0)
    store = ReconstructionStore(str(tmp_path / "gt.zarr"))
    store.begin({"collection_id": "gt"})
    decode_volume(store, scene, plan, device="cpu")
    volume = open_reconstruction(store.url, require_complete=False)["volume"].to_dataset()
    x, y, z = volume.x.values, volume.y.values, volume.z.values
    voxel = float(volume.attrs["voxel_size"])
    np.testing.assert_allclose(x[0] - origin[0], plan.grid.origin[0], atol=1e-6)  # absolute = local + origin
    grid = fusion.VolumeGrid(origin=(x[0], y[0], z[0]), voxel_size=voxel, shape=(len(z), len(y), len(x)))
    crossings = fusion.zero_crossings(volume.tsdf.values.astype(np.float32), grid, volume.weight.values)
    truth = world_points_from_depth(torch.from_numpy(depth).double(),
                                    torch.from_numpy(with_origin(world, -origin)),  # absolute world cameras
                                    torch.from_numpy(sample["intrinsics"]))[torch.from_numpy(depth > 0)].numpy()
    rng = np.random.default_rng(0)
    crossings = crossings[rng.choice(len(crossings), min(len(crossings), 20000), replace=False)]
    d = nearest_distances(crossings - origin, truth[rng.choice(len(truth), 60000)] - origin) / voxel
    print(f"{kind}: {len(crossings)} crossings, median {np.median(d):.3f} voxels, p90 {np.percentile(d, 90):.3f}")
    assert len(crossings) > 1000
    assert np.median(d) < 1.0
    assert volume.tsdf.dtype == np.float16 and volume.rgb.dtype == np.uint8
