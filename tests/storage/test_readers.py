"""Pose formats: cameras.json, nerfstudio transforms.json and COLMAP (text, binary) give the same
cameras for the same scene; format detection; camera and image sizes; bad files named with the reason."""

import io
import json
import re
import shutil
import struct
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from errors import InputError
from model.synthetic import write_collection
from storage.collection import read_collection
from storage.formats import (
    CameraTable,
    quaternion_from_rotation,
    rotation_from_quaternion,
    write_colmap_binary,
    write_colmap_text,
    write_transforms_json,
)

WRITERS = {"nerfstudio": write_transforms_json, "colmap-text": write_colmap_text,
           "colmap-binary": write_colmap_binary}
POSE_FILE = {"zipmap": "cameras.json", "nerfstudio": "transforms.json", "colmap-text": "sparse/0/images.txt",
             "colmap-binary": "sparse/0/images.bin"}


def raises(message: str):
    """pytest.raises(InputError) for a message that starts with ``message`` (taken literally)."""
    return pytest.raises(InputError, match="^" + re.escape(message))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """Three 28 x 42 views with cameras.json and depth."""
    return Path(write_collection(str(tmp_path_factory.mktemp("scene") / "c"), 5, "orbit", 3, 28, 42))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, scene) -> Path:
    """Four views, the last 20 x 30 with its own intrinsics: cameras.json and depth."""
    root = tmp_path_factory.mktemp("mixed")
    small = Path(write_collection(str(root / "small"), 6, "street", 1, 20, 30))
    dst = root / "c"
    shutil.copytree(scene, dst)
    shutil.copy(small / "images" / "000.png", dst / "images" / "003.png")
    shutil.copy(small / "depth" / "000.npy", dst / "depth" / "003.npy")
    doc = json.loads((dst / "cameras.json").read_text())
    extra = json.loads((small / "cameras.json").read_text())["frames"][0]
    doc["frames"].append({**extra, "image": "images/003.png"})
    (dst / "cameras.json").write_text(json.dumps(doc))
    return dst


def export(src: Path, dst: Path, fmt: str, cameras=None, depth: bool = False) -> str:
    """A copy of ``src``'s images (and depth) with its cameras (or ``cameras``) in format ``fmt``."""
    shutil.copytree(src / "images", dst / "images")
    if depth:
        shutil.copytree(src / "depth", dst / "depth")
    cameras = cameras if cameras is not None else read_collection(str(src), with_depth=False)
    if fmt == "zipmap":
        shutil.copy(src / "cameras.json", dst / "cameras.json")
    else:
        WRITERS[fmt](cameras, str(dst))
    return str(dst)


def assert_same_cameras(a, b):
    assert a.names == b.names
    assert a.cam_from_world.dtype == np.float64 and a.intrinsics.dtype == np.float64
    np.testing.assert_allclose(a.cam_from_world, b.cam_from_world, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.intrinsics, b.intrinsics, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------- same cameras


@pytest.mark.parametrize("which", ["scene", "mixed"])
def test_the_three_pose_formats_give_the_same_cameras(request, tmp_path, which):
    src = request.getfixturevalue(which)
    ours = read_collection(str(src))
    assert ours.source_format == "zipmap"
    for fmt in WRITERS:
        coll = read_collection(export(src, tmp_path / fmt, fmt, depth=True))
        assert coll.source_format == fmt.split("-")[0] and coll.units is None
        assert_same_cameras(coll, ours)
        assert coll.image_sizes() == ours.image_sizes()
        for a, b in zip(coll.images, ours.images):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(coll.depth, ours.depth):
            np.testing.assert_array_equal(a, b)


def test_mixed_sizes_with_cameras(mixed):
    coll = read_collection(str(mixed))
    assert coll.image_sizes() == [(28, 42)] * 3 + [(20, 30)]
    assert [d.shape for d in coll.depth] == coll.image_sizes()
    with raises(f"{mixed}: cannot stack images: images differ in size: 42x28 (000.png), 30x20 (003.png)"):
        coll.stacked_images()
    with raises(f"{mixed}: cannot stack depth maps"):
        coll.stacked_depth()


def test_writers_share_colmap_cameras_and_intrinsics(mixed, tmp_path):
    export(mixed, tmp_path / "t", "colmap-text")
    export(mixed, tmp_path / "n", "nerfstudio")
    cams = [line for line in (tmp_path / "t/sparse/0/cameras.txt").read_text().splitlines() if line[:1] != "#"]
    assert len(cams) == 2 and all(" PINHOLE " in line for line in cams)
    doc = json.loads((tmp_path / "n/transforms.json").read_text())
    assert "fl_x" not in doc and all("fl_x" in f and "w" in f for f in doc["frames"])  # sizes differ: per frame


def test_quaternions_round_trip():
    rng = np.random.default_rng(0)
    for q in [*rng.normal(size=(200, 4)), [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-9, 1, 1, 0]]:
        R = rotation_from_quaternion(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotation_from_quaternion(quaternion_from_rotation(R)), R, atol=1e-12)


# ---------------------------------------------------------------------------------------------- S3


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_formats_from_s3(s3_bucket, fmt):
    bucket, opts = s3_bucket
    src = write_collection(f"s3://{bucket}/city/c1", 4, "street", 2, 28, 42, storage_options=opts)
    ours = read_collection(src, storage_options=opts)
    fs, _ = fsspec.core.url_to_fs(src, **opts)
    dst = f"s3://{bucket}/city/{fmt}"
    for name in ours.names:
        fs.pipe_file(f"{bucket}/city/{fmt}/images/{name}", fs.cat_file(f"{bucket}/city/c1/images/{name}"))
    WRITERS[fmt](ours, dst, storage_options=opts)
    coll = read_collection(dst, storage_options=opts)
    assert coll.source_format == fmt.split("-")[0] and coll.depth is None
    assert coll.image_info[1]["path"] == f"{dst}/images/001.png"
    assert_same_cameras(coll, ours)


# ---------------------------------------------------------------------------------------------- detection


def test_format_preference_order(scene, tmp_path):
    dst = tmp_path / "all"
    shutil.copytree(scene, dst)
    for fmt in WRITERS:
        WRITERS[fmt](read_collection(str(scene)), str(dst))
    assert read_collection(str(dst)).source_format == "zipmap"
    (dst / "cameras.json").unlink()
    assert read_collection(str(dst)).source_format == "nerfstudio"
    (dst / "transforms.json").unlink()
    coll = read_collection(str(dst))
    assert coll.source_format == "colmap" and coll.depth is not None  # .bin preferred; both are present


@pytest.mark.parametrize("folder", ["sparse/0", "sparse", ""])
@pytest.mark.parametrize("fmt", ["colmap-text", "colmap-binary"])
def test_colmap_model_locations(scene, tmp_path, folder, fmt):
    ours = read_collection(str(scene))
    shutil.copytree(scene / "images", tmp_path / "images")
    WRITERS[fmt](ours, str(tmp_path), folder=folder)
    coll = read_collection(str(tmp_path))
    assert coll.source_format == "colmap"
    assert_same_cameras(coll, ours)


def test_colmap_sparse_zero_wins_over_sparse(scene, tmp_path):
    ours = read_collection(str(scene))
    shutil.copytree(scene / "images", tmp_path / "images")
    write_colmap_text(ours, str(tmp_path), folder="sparse/0")
    shifted = CameraTable(ours.names, ours.cam_from_world + 1.0, ours.intrinsics, tuple(ours.image_sizes()))
    write_colmap_text(shifted, str(tmp_path), folder="sparse")
    assert_same_cameras(read_collection(str(tmp_path)), ours)


# ---------------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize("model", ["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"])
def test_colmap_camera_models(scene, tmp_path, model):
    ours = read_collection(str(scene))
    url = export(scene, tmp_path, "colmap-text")
    K = ours.intrinsics[0]
    f, cx, cy = float(K[0, 0]), float(K[0, 2]), float(K[1, 2])
    assert np.all(ours.intrinsics == K) and K[1, 1] == f  # one shared camera with square pixels
    params = {"SIMPLE_PINHOLE": [f, cx, cy], "PINHOLE": [f, f, cx, cy], "SIMPLE_RADIAL": [f, cx, cy, 0.1],
              "RADIAL": [f, cx, cy, 0.1, -0.01], "OPENCV": [f, f, cx, cy, 0.1, -0.01, 0.001, 0.002]}[model]
    (tmp_path / "sparse/0/cameras.txt").write_text(f"# one camera\n1 {model} 42 28 {' '.join(map(repr, params))}\n")
    assert_same_cameras(read_collection(url), ours)  # distortion ignored


def test_nerfstudio_blender_style_and_per_frame_overrides(scene, tmp_path):
    ours = read_collection(str(scene))
    url = export(scene, tmp_path, "nerfstudio")
    doc = json.loads((tmp_path / "transforms.json").read_text())
    fx = doc.pop("fl_x")
    for key in ("fl_y", "cx", "cy", "w", "h"):
        doc.pop(key)
    doc["camera_angle_x"] = 2 * np.arctan(42 / 2 / fx)  # Blender: horizontal field of view; centred, size from file
    doc["frames"][0]["file_path"] = "./images/000"  # Blender: no extension
    doc["frames"][1]["fl_x"] = doc["frames"][1]["fl_y"] = fx  # a frame's own value beats the top level
    doc["frames"][2]["camera_angle_x"] = 2 * np.arctan(42 / 2 / (2 * fx))
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    coll = read_collection(url)
    assert coll.names == ours.names
    np.testing.assert_allclose(coll.cam_from_world, ours.cam_from_world, rtol=0, atol=1e-9)
    np.testing.assert_allclose(coll.intrinsics[:2], ours.intrinsics[:2], rtol=0, atol=1e-9)
    np.testing.assert_allclose(coll.intrinsics[2, [0, 1], [0, 1]], [2 * fx, 2 * fx], rtol=1e-12)


def test_nerfstudio_applied_transform_is_undone(scene, tmp_path):
    ours = read_collection(str(scene))
    url = export(scene, tmp_path, "nerfstudio")
    doc = json.loads((tmp_path / "transforms.json").read_text())
    A = np.array([[0.0, 1, 0, 2], [1, 0, 0, -3], [0, 0, -1, 0.5], [0, 0, 0, 1]])  # as ns-process-data permutes
    for frame in doc["frames"]:
        frame["transform_matrix"] = (A @ np.array(frame["transform_matrix"])).tolist()
    doc["applied_transform"] = A[:3].tolist()
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    assert_same_cameras(read_collection(url), ours)


@pytest.mark.parametrize("fmt", list(WRITERS))
@pytest.mark.parametrize("factor", [2, 3, 0.5])
def test_resized_images_scale_the_intrinsics(scene, tmp_path, fmt, factor):
    ours = read_collection(str(scene))
    K = ours.intrinsics * np.array([[factor], [factor], [1.0]])
    sizes = tuple((round(28 * factor), round(42 * factor)) for _ in ours.names)  # the images the poses saw
    url = export(scene, tmp_path, fmt, CameraTable(ours.names, ours.cam_from_world, K, sizes))
    coll = read_collection(url)
    assert coll.image_sizes() == ours.image_sizes()
    np.testing.assert_allclose(coll.intrinsics, ours.intrinsics, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- EXIF


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("camera_size, shape, transposed", [((42, 28), (28, 42, 3), False),
                                                            ((28, 42), (42, 28, 3), True),
                                                            ((84, 56), (28, 42, 3), False),
                                                            ((14, 21), (42, 28, 3), True)])
def test_exif_rotated_images_follow_the_camera_size(tmp_path, camera_size, shape, transposed):
    """Raw 42 x 28 pixels, EXIF orientation 6 (upright 28 x 42): the camera's size says which grid it saw."""
    (tmp_path / "images").mkdir()
    rgb = np.zeros((28, 42, 3), np.uint8)
    rgb[:, :21] = 200
    (tmp_path / "images" / "a.jpg").write_bytes(exif_jpeg(rgb, 6))
    w, h = camera_size
    K = np.array([[[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]]])
    write_colmap_binary(CameraTable(("a.jpg",), np.eye(4)[None, :3], K, ((h, w),)), str(tmp_path))
    coll = read_collection(str(tmp_path))
    assert coll.images[0].shape == shape and coll.image_info[0]["exif_transposed"] is transposed
    assert coll.image_info[0]["exif_orientation"] == 6
    s = shape[1] / w
    np.testing.assert_allclose(coll.intrinsics[0], [[30 * s, 0, shape[1] / 2], [0, 30 * s, shape[0] / 2], [0, 0, 1]])


def test_exif_rotation_without_cameras_is_applied(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(exif_jpeg(np.zeros((28, 42, 3), np.uint8), 8))
    coll = read_collection(str(tmp_path))
    assert coll.image_sizes() == [(42, 28)] and coll.image_info[0]["exif_transposed"]


def test_mixed_sizes_without_cameras(tmp_path):
    (tmp_path / "images").mkdir()
    for name, (h, w) in {"b.png": (28, 42), "a.jpg": (20, 30), "c.PNG": (42, 28)}.items():
        Image.new("RGB", (w, h), (10, 20, 30)).save(tmp_path / "images" / name)
    coll = read_collection(str(tmp_path))
    assert coll.names == ("a.jpg", "b.png", "c.PNG") and coll.image_sizes() == [(20, 30), (28, 42), (42, 28)]
    assert coll.cam_from_world is None and coll.source_format == "images"
    assert [i["format"] for i in coll.image_info] == ["JPEG", "PNG", "PNG"]
    with raises(f"{tmp_path}: cannot stack images: images differ in size"):
        coll.stacked_images()


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt", list(POSE_FILE))
def test_missing_pose_for_an_image(scene, tmp_path, fmt):
    ours = read_collection(str(scene))
    two = CameraTable(ours.names[:2], ours.cam_from_world[:2], ours.intrinsics[:2], tuple(ours.image_sizes()[:2]))
    url = export(scene, tmp_path, fmt, two)
    if fmt == "zipmap":
        doc = json.loads((tmp_path / "cameras.json").read_text())
        doc["frames"] = doc["frames"][:2]
        (tmp_path / "cameras.json").write_text(json.dumps(doc))
    pose_file = POSE_FILE[fmt]
    with raises(f"{url}/{pose_file}: no camera in {Path(pose_file).name} for images/002.png"):
        read_collection(url)


@pytest.mark.parametrize("fmt", list(POSE_FILE))
def test_a_camera_without_its_image_fails_naming_the_image(scene, tmp_path, fmt):
    """A lost photo is never dropped silently: its camera names it, in every pose format."""
    url = export(scene, tmp_path, fmt)
    assert read_collection(url).names == ("000.png", "001.png", "002.png")
    (tmp_path / "images" / "001.png").unlink()
    expected = (f"{url}/images/001.png: missing (frame of " if fmt == "nerfstudio" else
                f"{url}/images/001.png: missing (its camera is in {url}/{POSE_FILE[fmt]})")
    with raises(expected):
        read_collection(url)


def break_transforms(doc, case):
    frame = doc["frames"][1]
    if case == "no frames":
        return {"fl_x": 1.0}
    if case == "matrix":
        frame["transform_matrix"] = [[1, 2], [3, 4]]
    elif case == "not a rotation":
        frame["transform_matrix"][0][0] *= 1.5
    elif case == "focal":
        doc.pop("fl_x")
    elif case == "model":
        doc["camera_model"] = "OPENCV_FISHEYE"
    elif case == "file":
        frame["file_path"] = "images/009.png"
    elif case == "outside":
        frame["file_path"] = "../other/001.png"
    elif case == "size":
        frame["w"] = -4
    return doc


@pytest.mark.parametrize("case, message", [
    ("no frames", "transforms.json: expected {'frames': [...]}"),
    ("matrix", "transforms.json: frame 1 (images/001.png): transform_matrix must be a finite 3x4 or 4x4 matrix"),
    ("not a rotation", "transforms.json: frame 1 (images/001.png): transform_matrix rotation is not a proper "
                       "rotation"),
    ("focal", "transforms.json: frame 0 (images/000.png): no focal length (fl_x or camera_angle_x)"),
    ("model", "transforms.json: frame 0 (images/000.png): unsupported camera_model 'OPENCV_FISHEYE'"),
    ("file", "images/009.png: missing (frame of "),
    ("outside", "transforms.json: frame 1 file_path '../other/001.png' must be relative to the collection folder"),
    ("size", "transforms.json: frame 1 (images/001.png): w must be a positive whole number of pixels, got -4"),
])
def test_bad_transforms_json(scene, tmp_path, case, message):
    url = export(scene, tmp_path, "nerfstudio")
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(break_transforms(json.loads(path.read_text()), case)))
    with raises(f"{url}/{message}"):
        read_collection(url)


@pytest.mark.parametrize("content", [b"{broken", b"", b"\xff\xfe\x00garbage"])
def test_malformed_transforms_json(scene, tmp_path, content):
    url = export(scene, tmp_path, "nerfstudio")
    (tmp_path / "transforms.json").write_bytes(content)
    with raises(f"{url}/transforms.json: not valid JSON ("):
        read_collection(url)


@pytest.mark.parametrize("model, message", [
    ("FANCY", "camera 1: unsupported camera model FANCY (supported: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, "
              "RADIAL, OPENCV)"),
    ("OPENCV_FISHEYE", "camera 1: unsupported camera model OPENCV_FISHEYE"),
])
def test_unknown_colmap_model_text(scene, tmp_path, model, message):
    url = export(scene, tmp_path, "colmap-text")
    path = tmp_path / "sparse/0/cameras.txt"
    path.write_text(path.read_text().replace(" PINHOLE ", f" {model} "))
    with raises(f"{url}/sparse/0/cameras.txt: {message}"):
        read_collection(url)


@pytest.mark.parametrize("model_id, message", [(99, "camera 1: unknown camera model id 99"),
                                               (5, "camera 1: unsupported camera model OPENCV_FISHEYE")])
def test_unknown_colmap_model_binary(scene, tmp_path, model_id, message):
    url = export(scene, tmp_path, "colmap-binary")
    path = tmp_path / "sparse/0/cameras.bin"
    data = bytearray(path.read_bytes())
    struct.pack_into("<i", data, 8 + 4, model_id)  # after the count and the first camera's id
    path.write_bytes(bytes(data))
    with raises(f"{url}/sparse/0/cameras.bin: {message}"):
        read_collection(url)


@pytest.mark.parametrize("file", ["cameras.bin", "images.bin"])
@pytest.mark.parametrize("cut", [1, 8, 20, 0.5])
def test_colmap_binary_truncated(scene, tmp_path, file, cut):
    url = export(scene, tmp_path, "colmap-binary")
    path = tmp_path / "sparse/0" / file
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - cut] if isinstance(cut, int) else data[:int(len(data) * cut)])
    with raises(f"{url}/sparse/0/{file}: truncated or corrupt binary file"):
        read_collection(url)


def test_colmap_binary_trailing_bytes_and_bad_camera_id(scene, tmp_path):
    url = export(scene, tmp_path, "colmap-binary")
    path = tmp_path / "sparse/0/cameras.bin"
    good = path.read_bytes()
    path.write_bytes(good + b"\0\0")
    with raises(f"{url}/sparse/0/cameras.bin: corrupt binary file (2 bytes after the last record)"):
        read_collection(url)
    path.write_bytes(good)
    text = tmp_path / "t"
    export(scene, text, "colmap-text")
    images = text / "sparse/0/images.txt"
    images.write_text(re.sub(r" 1 001\.png", " 7 001.png", images.read_text()))
    with raises(f"{text}/sparse/0/images.txt: image 001.png refers to camera 7, which {text}/sparse/0/cameras.txt "
                "lacks"):
        read_collection(str(text))


@pytest.mark.parametrize("content, message", [
    ("1 PINHOLE 42 28 1.0 2.0\n", "camera 1: model PINHOLE takes 4 parameters, got 2"),
    ("1 PINHOLE 42 twenty 1 1 1 1\n", "line 1: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..."),
    ("1 PINHOLE 42 28 -5 5 21 14\n", "camera 1: focal length (-5.0, 5.0) is not positive"),
])
def test_bad_colmap_cameras_text(scene, tmp_path, content, message):
    url = export(scene, tmp_path, "colmap-text")
    (tmp_path / "sparse/0/cameras.txt").write_text(content)
    with raises(f"{url}/sparse/0/cameras.txt: {message}"):
        read_collection(url)


def test_colmap_images_text_without_points_lines(scene, tmp_path):
    url = export(scene, tmp_path, "colmap-text")
    path = tmp_path / "sparse/0/images.txt"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if line) + "\n")
    with raises(f"{url}/sparse/0/images.txt: line 6: expected the 2D points of image 1"):
        read_collection(url)


@pytest.mark.parametrize("fmt", list(POSE_FILE))
def test_camera_size_mismatch(scene, tmp_path, fmt):
    ours = read_collection(str(scene))
    sizes = ((28, 42), (28, 40), (28, 42))  # 001.png is 42 x 28; its camera says 40 x 28
    url = export(scene, tmp_path, fmt, CameraTable(ours.names, ours.cam_from_world, ours.intrinsics, sizes))
    if fmt == "zipmap":
        doc = json.loads((tmp_path / "cameras.json").read_text())
        doc["frames"][1]["width"] = 40
        (tmp_path / "cameras.json").write_text(json.dumps(doc))
    with raises(f"{url}/images/001.png: image is 42x28 pixels but {url}/{POSE_FILE[fmt]} gives its camera as 40x28, "
                "not a uniform scale of it"):
        read_collection(url)


def test_image_errors_name_the_image(scene, tmp_path):
    url = export(scene, tmp_path, "colmap-binary")
    data = (tmp_path / "images" / "001.png").read_bytes()
    (tmp_path / "images" / "001.png").write_bytes(data[: len(data) // 2])
    with raises(f"{url}/images/001.png: truncated or corrupt image (PNG"):
        read_collection(url)
    (tmp_path / "images" / "001.png").write_bytes(data)
    with raises(f"{url}/images/000.png: image of 42 x 28 pixels exceeds the limit of 1000 pixels"):
        read_collection(url, max_pixels=1000)


def test_no_images(tmp_path):
    with raises(f"{tmp_path}/nowhere: no such folder"):
        read_collection(str(tmp_path / "nowhere"))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("hi")
    with raises(f"{tmp_path}/images: no .png/.jpg/.jpeg files"):
        read_collection(str(tmp_path))
