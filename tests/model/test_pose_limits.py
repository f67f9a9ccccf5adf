"""Physical limits on given poses and on the placed scene (``pose_rules``, ``model.pose_checks``,
``model.placement``): each broken pose file fails naming the file, the frame and the limit; real
captures (synthetic street, UTM and Earth-centred coordinates, feet) pass."""

import re

import numpy as np
import pytest
import torch

from errors import ConfigError, InputError, PoseCheckError
from model.inference import Views, ZipResult
from model.placement import Scene, place_in_world, plan_volume
from model.pose_checks import (
    PoseCheckReport,
    camera_centres,
    check_distinct_images,
    check_given_poses,
    check_scene_scale,
    flag_predicted_baseline,
)
from model.synthetic import generate_sample
from pose_rules import MAX_POSITION_M, MIN_BASELINE_M, metres_per_unit

SIZE = (56, 84)
SOURCE = "s3://b/c/cameras.json"
FT = 0.3048
BEYOND_1E8 = "camera position 1.73e+30 m from the origin is beyond the limit of 1e+08 m"


@pytest.fixture(scope="module")
def street():
    return generate_sample(11, "street", 8, *SIZE)


def _check(cams, K, units=None):
    return check_given_poses(cams, K, [SIZE] * len(cams), [f"{i:03d}.png" for i in range(len(cams))], SOURCE,
                             units=units)


def _shifted(cams, offset):
    """The same cameras in a world shifted by ``+offset`` (camera centres move by ``offset``)."""
    out = cams.copy()
    out[:, :, 3] -= np.einsum("nab,b->na", cams[:, :3, :3], np.asarray(offset, np.float64))
    return out


def _scaled(cams, factor):
    """The same rig with every camera centre scaled by ``factor`` about the world origin."""
    out = cams.copy()
    out[:, :, 3] *= factor
    return out


@pytest.mark.parametrize("offset, units", [
    ((0.0, 0.0, 0.0), "m"),
    ((512_345.678, 5_412_345.125, 312.5), "m"),  # UTM zone 33N
    ((687_000.5, 9_950_000.25, 40.0), "metre"),  # UTM southern hemisphere (false northing 1e7 m)
    ((4_198_944.0, 174_747.0, 4_781_886.0), None),  # Earth-centred (ECEF), units unstated
])
def test_real_captures_pass(street, offset, units):
    report = _check(_shifted(street["cam_from_world"], offset), street["intrinsics"], units)
    assert report.poses_given and report.camera_extent == pytest.approx(7.1087, rel=1e-6) and not report.warnings


def test_units_are_converted_to_metres(street):
    """The same rig stated in feet passes in feet; 1e8 ft (3e7 m) is inside the position limit, 1e9 ft is not."""
    cams = _scaled(street["cam_from_world"], 1 / FT)
    assert _check(cams, street["intrinsics"], "ft").camera_extent == pytest.approx(7.1087 / FT, rel=1e-6)
    assert _check(_shifted(cams, (1e8, 0, 0)), street["intrinsics"], "ft").poses_given
    with pytest.raises(PoseCheckError, match=r"frame 000\.png: camera position 1e\+09 ft \(3\.05e\+08 m\) from the "
                                             r"origin is beyond the limit of 1e\+08 m"):
        _check(_shifted(cams, (1e9, 0, 0)), street["intrinsics"], "ft")
    assert metres_per_unit("US survey foot") == pytest.approx(1200 / 3937) and metres_per_unit("furlong") is None
    report = _check(street["cam_from_world"], street["intrinsics"], "furlong")  # read as metres, with a warning
    assert report.warnings == [f"units 'furlong' of {SOURCE} are not recognised; physical limits applied as if metres"]


def _all_translations_1e30(c, K):
    c[:, :, 3] += 1e30


def _one_translation_1e30(c, K):
    c[3, :, 3] += 1e30


def _focal_1e9(c, K):
    K[5, 0, 0] = K[5, 1, 1] = 1e9


def _focal_tiny(c, K):
    K[1, 0, 0] = K[1, 1, 1] = 2.0


def _non_square_pixels(c, K):
    K[2, 1, 1] = 4 * K[2, 0, 0]


def _one_camera_200_km_away(c, K):
    c[4] = _shifted(c[4:5], (2e5, 0, 0))[0]


@pytest.mark.parametrize("break_it, message", [
    (_all_translations_1e30, f"frame 000.png: {BEYOND_1E8}"),
    (_one_translation_1e30, f"frame 003.png: {BEYOND_1E8}"),
    (_focal_1e9, "frame 005.png: focal length fx=1e+09 px is 1.19e+07 times the image width (84 px), outside "
                 "[0.1, 1000]"),
    (_focal_tiny, "frame 001.png: focal length fx=2 px is 0.0238 times the image width (84 px), outside [0.1, 1000]"),
    (_non_square_pixels, "frame 002.png: focal lengths fx=82.68 and fy=330.7 px differ by a factor 4, beyond 3"),
    (_one_camera_200_km_away, "frame 004.png: camera baseline 2e+05 m is beyond the limit of 1e+05 m: a misplaced "
                              "camera or wrong units (it lies 2e+05 m from the median camera position)"),
])
def test_poses_beyond_the_limits_are_named(street, break_it, message):
    cams, K = street["cam_from_world"].copy(), street["intrinsics"].copy()
    break_it(cams, K)
    with pytest.raises(PoseCheckError) as info:
        _check(cams, K)
    assert str(info.value).startswith(f"{SOURCE}: {message}")


@pytest.mark.parametrize("baseline, shown", [(1e-9, "1e-09 m"), (5e-4, "0.0005 m")])
def test_a_baseline_below_the_limit_is_refused(street, baseline, shown):
    """Cameras within ``baseline`` of each other (each keeps its own orientation, so none is a duplicate)."""
    cams = street["cam_from_world"]
    C = camera_centres(cams)
    squeezed = _scaled(_shifted(cams, -C[0]), baseline / np.linalg.norm(np.ptp(C, axis=0)))
    squeezed = _shifted(squeezed, C[0] * 1e-3)  # near, not at, the origin (no float64 precision problem)
    with pytest.raises(PoseCheckError) as info:
        _check(squeezed, street["intrinsics"])
    assert str(info.value).startswith(f"{SOURCE}: frames 000.png to 007.png: all 8 cameras are at the same position: "
                                      f"no baseline for geometry (camera baseline {shown}, ")
    assert f"below the limit of {MIN_BASELINE_M:g} m)" in str(info.value)
    _check(_scaled(squeezed, 1.01 * MIN_BASELINE_M / baseline), street["intrinsics"])  # just above: passes


def test_float64_precision_lost_far_from_the_origin(street):
    """A 5 mm rig 9.9e7 m from the origin: inside the position limit, but float64 cannot resolve its baseline."""
    cams = street["cam_from_world"]
    rig = _scaled(cams, 5e-3 / 7.1087)
    with pytest.raises(PoseCheckError, match=r"^s3://b/c/cameras\.json: frame 00\d\.png: cameras up to 9\.9e\+07 m "
                                             r"from the origin but only 0\.005 m apart: float64 resolves 2\.2e-08 m"):
        _check(_shifted(rig, (0.99 * MAX_POSITION_M, 0, 0)), street["intrinsics"])
    assert _check(_shifted(rig, (5_412_345.0, 0, 0)), street["intrinsics"]).poses_given  # UTM-sized: fine


def test_identical_images_are_named():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (6, 4, 3), dtype=np.uint8) for _ in range(3)]
    paths = [f"s3://b/c/images/{i:03d}.png" for i in range(4)]
    check_distinct_images(images, paths[:3])
    check_distinct_images([np.zeros((2, 6, 3), np.uint8), np.zeros((4, 3, 3), np.uint8)], paths[:2])  # same bytes
    with pytest.raises(InputError, match=r"^s3://b/c/images/003\.png: identical to s3://b/c/images/001\.png "
                                         r"\(the same pixels\)"):
        check_distinct_images(images + [images[1].copy()], paths)


def test_scene_scale_limits():
    report = PoseCheckReport(poses_given=True, depth_scale=2.0)
    check_scene_scale(5.0, report, "m", SOURCE)  # a 10 m scene
    check_scene_scale(5.0, report, "ft", SOURCE)
    for scale, median, shown in ((1e28, 1.0, "1e+28 m"), (1e-6, 1.0, "1e-06 m"), (float("nan"), 1.0, "nan m")):
        report.depth_scale = scale
        with pytest.raises(PoseCheckError, match=r"^s3://b/c/cameras\.json: the predicted depth scaled to the given "
                                                 r"cameras .* has a median of " + re.escape(shown) + ", outside the "
                                                 r"limits of 0\.001 to 1e\+05 m"):
            check_scene_scale(median, report, "m", SOURCE)


def test_predicted_capture_without_baseline_is_flagged(street):
    cams, depth = street["cam_from_world"], street["depth"]
    moving = flag_predicted_baseline(PoseCheckReport(poses_given=False), cams, depth)
    assert not moving.no_baseline and moving.baseline_to_depth > 0.1 and not moving.warnings
    still = cams.copy()
    still[:, :, 3] = -np.einsum("nab,b->na", cams[:, :3, :3], camera_centres(cams)[0] + 1e-3 * np.arange(3))
    flagged = flag_predicted_baseline(PoseCheckReport(poses_given=False), still, depth)
    assert flagged.no_baseline and flagged.baseline_to_depth < 1e-3
    assert flagged.warnings[0].startswith("no baseline: the predicted cameras of the 8 views span")
    assert flagged.to_dict()["no_baseline"] is True  # what the summary and the store carry


def _prediction(sample, motion=1.0):
    """The synthetic truth as the network's output (cameras re-anchored on the first, as predicted), with
    the predicted camera motion scaled by ``motion``."""
    T = np.tile(np.eye(4), (len(sample["cam_from_world"]), 1, 1))
    T[:, :3] = sample["cam_from_world"]
    pred = (T @ np.linalg.inv(T[0]))[:, :3]
    pred[:, :, 3] *= motion
    images = np.round(sample["images"].transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    S = len(pred)
    views = Views(torch.from_numpy(sample["images"]), sample["intrinsics"], np.ones(S), np.zeros((S, 2)))
    zr = ZipResult(images, pred, sample["intrinsics"], sample["depth"], np.ones_like(sample["depth"]), "offline",
                   "cpu", 0.0)
    return views, zr


def test_placement_refuses_a_scale_beyond_the_limits(street):
    """Given cameras 7 m apart but a prediction that barely moves (1e-9 of it): the depth scale that would
    make them agree puts the scene 1e9 times too far. Without the check the volume's voxels were 1e8 m."""
    names = tuple(f"{i:03d}.png" for i in range(8))
    given, report = street["cam_from_world"], PoseCheckReport(poses_given=True, source=SOURCE, camera_extent=7.1)
    scene = place_in_world(names, given, "m", None, *_prediction(street), report, SOURCE)
    assert scene.metric and 0.5 < scene.report.depth_scale < 2  # the truth: passes
    with pytest.raises(PoseCheckError, match=r"^s3://b/c/cameras\.json: the predicted depth scaled to the given "
                                             r"cameras \(depth scale 1e\+09\) has a median of .*e\+10 m, outside"):
        place_in_world(names, given, "m", None, *_prediction(street, 1e-9),
                       PoseCheckReport(poses_given=True, source=SOURCE, camera_extent=7.1), SOURCE)


def _scene(sample, factor, units="m"):
    """A placed metric scene: the synthetic truth with every length multiplied by ``factor``."""
    S = len(sample["depth"])
    images = np.round(sample["images"].transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    cams = _scaled(sample["cam_from_world"], factor)
    return Scene(tuple(f"{i:03d}.png" for i in range(S)), images, (sample["depth"] * factor).astype(np.float32),
                 np.ones_like(sample["depth"]), cams, cams, sample["intrinsics"], np.zeros(3), units, None, True,
                 PoseCheckReport(poses_given=True), source=SOURCE)


def test_voxel_size_limits(street):
    plan = plan_volume(_scene(street, 1.0), max_voxels=32)
    assert 0.1 < plan.grid.voxel_size < 100
    with pytest.raises(PoseCheckError, match=r"^s3://b/c/cameras\.json: the planned voxel size .*e\+0[45] m \(the "
                                             r"scene spans .* over 32 voxels\) is outside the limits of 1e-06 to "
                                             r"10000 m"):
        plan_volume(_scene(street, 1e5), max_voxels=32)
    with pytest.raises(PoseCheckError, match=r"voxel size .* km \(.* m\)"):  # km: converted before the limit
        plan_volume(_scene(street, 1e2, "km"), max_voxels=32)
    with pytest.raises(ConfigError, match=r"^voxel size 2e\+04 m is outside the limits"):
        plan_volume(_scene(street, 1.0), voxel_size=2e4)
