"""The stage sequence (``tasks.stages.run_reconstruction``) on small synthetic collections: a pose file
beyond the physical limits, identical images or a lost photo fail before anything is written, naming
the file and the frame; a capture without baseline and without poses completes, flagged in the summary
and in the store."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from errors import InputError, PoseCheckError
from model.synthetic import write_collection
from settings import ReconstructionSettings
from storage.collection import read_collection
from storage.zarr_store import read_attrs
from tasks.stages import check_poses, run_reconstruction

FRAMES, H, W = 4, 28, 42


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return Path(write_collection(str(tmp_path_factory.mktemp("src") / "c"), 1_000_006, "street", FRAMES, H, W))


def _edit_frames(src: Path, edit) -> None:
    doc = json.loads((src / "cameras.json").read_text())
    for k, frame in enumerate(doc["frames"]):
        T = np.array(frame["world_to_camera"])
        edit(k, T, frame)
        frame["world_to_camera"] = T.tolist()
    (src / "cameras.json").write_text(json.dumps(doc))


def _all_1e30(src):
    _edit_frames(src, lambda k, T, f: T[:3, 3].__iadd__(1e30))


def _one_1e30(src):
    _edit_frames(src, lambda k, T, f: T[:3, 3].__iadd__(1e30 if k == 2 else 0.0))


def _baseline_1e9(src):
    """Every camera within 1e-9 m of the first one's centre, each with its own orientation."""
    doc = json.loads((src / "cameras.json").read_text())
    T0 = np.array(doc["frames"][0]["world_to_camera"])
    C0 = -T0[:3, :3].T @ T0[:3, 3]

    def edit(k, T, frame):
        T[:3, 3] = -T[:3, :3] @ (C0 + np.array([1e-9 * k / (FRAMES - 1), 0.0, 0.0]))
    _edit_frames(src, edit)


def _focal_1e9(src):
    _edit_frames(src, lambda k, T, f: f.update(fx=1e9, fy=1e9) if k == 1 else None)


def _identical_images(src):
    (src / "cameras.json").unlink()  # images only: nothing else would stop it
    shutil.copy(src / "images" / "000.png", src / "images" / "003.png")


def _lost_photo(src):
    (src / "images" / "001.png").unlink()


@pytest.mark.parametrize("break_it, error, message", [
    (_all_1e30, PoseCheckError, "{src}/cameras.json: frame 000.png: camera position 1.73e+30 m from the origin is "
                                "beyond the limit of 1e+08 m"),
    (_one_1e30, PoseCheckError, "{src}/cameras.json: frame 002.png: camera position 1.73e+30 m from the origin is "
                                "beyond the limit of 1e+08 m"),
    (_baseline_1e9, PoseCheckError, "{src}/cameras.json: frames 000.png to 003.png: all 4 cameras are at the same "
                                    "position: no baseline for geometry (camera baseline 1e-09 m, below the limit of "
                                    "0.001 m)"),
    (_focal_1e9, PoseCheckError, "{src}/cameras.json: frame 001.png: focal length fx=1e+09 px is 2.38e+07 times the "
                                 "image width (42 px)"),
    (_identical_images, InputError, "{src}/images/003.png: identical to {src}/images/000.png (the same pixels)"),
    (_lost_photo, InputError, "{src}/images/001.png: missing (its camera is in {src}/cameras.json)"),
])
def test_fails_before_anything_is_written(clean, tmp_path, break_it, error, message):
    src = tmp_path / "c"
    shutil.copytree(clean, src)
    break_it(src)
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        run_reconstruction(str(src), str(out), ReconstructionSettings(max_voxels=16))
    assert str(info.value).startswith(message.format(src=src))
    assert not out.exists()  # no store, not even the output folder


def test_projected_crs_and_feet_pass_the_checks(clean, tmp_path):
    """UTM-sized coordinates in US survey feet (a state-plane style CRS) pass ``check_poses`` as read."""
    src = tmp_path / "c"
    shutil.copytree(clean, src)
    us_ft = 1200 / 3937
    offset = np.array([1_640_000.0, 17_750_000.0, 1_025.0])  # feet: 5e5 m easting, 5.4e6 m northing

    def edit(k, T, frame):
        T[:3, 3] = T[:3, 3] / us_ft - T[:3, :3] @ offset
    _edit_frames(src, edit)
    doc = json.loads((src / "cameras.json").read_text())
    (src / "cameras.json").write_text(json.dumps({**doc, "units": "us-ft", "crs": "EPSG:2263"}))
    report = check_poses(read_collection(str(src), with_depth=False))
    original = check_poses(read_collection(str(clean), with_depth=False))
    assert report.poses_given and not report.warnings
    assert report.camera_extent == pytest.approx(original.camera_extent / us_ft, rel=1e-6)


def test_capture_without_baseline_is_flagged_not_silent(clean, tmp_path):
    """No poses: noisy copies of one photo (not identical, so not refused) complete, flagged as without
    baseline in the summary and the store; a street walk without poses is not flagged."""
    settings = ReconstructionSettings(max_voxels=16)
    still = tmp_path / "still"
    (still / "images").mkdir(parents=True)
    rgb = np.asarray(Image.open(clean / "images" / "000.png")).astype(int)
    rng = np.random.default_rng(0)
    for k in range(3):
        noisy = np.clip(rgb + rng.integers(-2, 3, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(still / "images" / f"{k:03d}.png")
    summary = run_reconstruction(str(still), str(tmp_path / "out"), settings)
    pc = summary["pose_checks"]
    assert summary["status"] == "complete" and pc["no_baseline"] and pc["baseline_to_depth"] < 0.05
    assert any(w.startswith("no baseline: the predicted cameras of the 3 views") for w in pc["warnings"])
    stored = read_attrs(str(tmp_path / "out" / "still.zarr"))["summary"]["pose_checks"]
    assert stored["no_baseline"] is True and stored["warnings"] == pc["warnings"]

    walk = tmp_path / "walk"
    shutil.copytree(clean / "images", walk / "images")
    moving = run_reconstruction(str(walk), str(tmp_path / "out"), settings)["pose_checks"]
    assert not moving["no_baseline"] and moving["baseline_to_depth"] > 0.05 and not moving["warnings"]
