"""Camera-pose file formats: parsers (bytes -> per-image cameras) and writers (cameras -> files).

Three formats, all converted to the product's convention: OpenCV camera axes (x right, y down,
z forward), ``cam_from_world`` ``[3, 4]`` float64 mapping world points into the camera frame, and
intrinsics in pixels with pixel centres at +0.5 (a centred principal point is ``cx = W / 2``).

- ``cameras.json`` (ours; README "Collections"): already in that convention.
- nerfstudio ``transforms.json``: ``transform_matrix`` is camera-to-world with OpenGL/Blender camera
  axes (x right, y up, z backward), so ``cam_from_world = inv(transform_matrix @ diag(1, -1, -1, 1))``.
  Intrinsics ``fl_x, fl_y, cx, cy, w, h`` sit at the top level or per frame (a frame's value wins);
  without ``fl_x``, the Blender ``camera_angle_x`` (horizontal field of view, radians) gives
  ``fl_x = w / 2 / tan(camera_angle_x / 2)``; ``fl_y`` defaults to ``camera_angle_y``'s focal length,
  then to ``fl_x``; ``cx, cy`` default to ``w / 2, h / 2``. nerfstudio casts rays through pixel
  centres ``(u + 0.5, v + 0.5)`` with ``cx, cy`` as stored, the same convention as ours: no shift.
  An ``applied_transform`` (written by ``ns-process-data``: the world axes it permuted after COLMAP)
  is undone, so the cameras come back in the frame of the COLMAP model they came from. Perspective
  ``camera_model`` values only; distortion coefficients are ignored.
- COLMAP sparse model (``cameras.{txt,bin}`` + ``images.{txt,bin}``): ``images`` store
  ``cam_from_world`` as a unit quaternion ``(qw, qx, qy, qz)`` (Hamilton, scalar first) and a
  translation, OpenCV axes; COLMAP's pixel centres are at +0.5 as ours. Camera models SIMPLE_PINHOLE,
  PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV give ``fx, fy, cx, cy``; their distortion parameters are
  ignored (the product's network takes undistorted pinhole images). Other models are rejected.

Writers take a :class:`CameraTable` or anything with ``names``, ``cam_from_world``, ``intrinsics``
and ``image_sizes()`` (a ``storage.collection.Collection``) and write floats in full float64 precision
(``repr``), so a write-read round trip reproduces the cameras to rounding error. Images are not
written: the formats reference ``images/<name>``.

Every parse problem raises :class:`errors.InputError` starting with the file's URL and the reason.
"""

from __future__ import annotations

import json
import math
import posixpath
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from errors import InputError
from pose_rules import ORTHONORMAL_TOL, orthonormal_error, rotation_problem

# COLMAP camera models: id -> (name, number of parameters). The first five are read; the others are
# named only so that a rejection can say which model it met.
COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
COLMAP_SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
COLMAP_MODEL_ID = {name: i for i, (name, _) in COLMAP_MODELS.items()}
COLMAP_NUM_PARAMS = {name: n for name, n in COLMAP_MODELS.values()}
# nerfstudio camera_model values with a pinhole projection (distortion aside).
NERFSTUDIO_PERSPECTIVE = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
CAMERAS_JSON_KEYS = ("image", "width", "height", "fx", "fy", "cx", "cy", "world_to_camera")
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z: OpenCV <-> OpenGL/Blender axes


@dataclass(frozen=True)
class FrameCamera:
    """One image's camera as a pose file states it; intrinsics may be partly implied (nerfstudio)."""

    image: str  # the image file, relative to the collection root ("images/000.png")
    cam_from_world: np.ndarray  # [3, 4] float64, OpenCV axes
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    width: int | None = None  # the image size the intrinsics refer to; None = whatever the image is
    height: int | None = None
    fov_x: float | None = None  # radians (Blender camera_angle_x), used when fx is None
    fov_y: float | None = None

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """``[3, 3]`` float64 in pixels of the camera's stated size, or of ``width x height`` if none."""
        w = self.width if self.width is not None else width
        h = self.height if self.height is not None else height
        fx = self.fx if self.fx is not None else w / 2 / math.tan(self.fov_x / 2)
        fy = self.fy if self.fy is not None else (h / 2 / math.tan(self.fov_y / 2) if self.fov_y else fx)
        cx = self.cx if self.cx is not None else w / 2
        cy = self.cy if self.cy is not None else h / 2
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PoseFile:
    """The cameras of one pose file; ``where`` is its URL (the file that names images, for COLMAP)."""

    where: str
    source_format: str  # "zipmap" | "nerfstudio" | "colmap"
    frames: tuple[FrameCamera, ...]
    units: str | None = None
    crs: str | None = None


# ---------------------------------------------------------------------------------------------- helpers


def number(value: Any, what: str, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: {what} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise InputError(f"{where}: {what} must be positive, got {value!r}")
    return float(value)


def size(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise InputError(f"{where}: {what} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def matrix(value: Any, what: str, where: str, shapes=((4, 4),)) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.shape not in shapes or not np.isfinite(m).all():
        allowed = " or ".join(f"{r}x{c}" for r, c in shapes)
        raise InputError(f"{where}: {what} must be a finite {allowed} matrix")
    return np.concatenate([m[:3], [[0.0, 0.0, 0.0, 1.0]]]) if m.shape == (3, 4) else m


def load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise InputError(f"{where}: not valid JSON ({exc})") from exc


def rotation_from_quaternion(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` (normalised here) -> ``[3, 3]`` rotation matrix."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def quaternion_from_rotation(R: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation -> unit quaternion ``(w, x, y, z)`` with ``w >= 0``; stable for every angle
    (the largest of the four components is taken from the diagonal, the others from off-diagonals)."""
    R = np.asarray(R, np.float64)
    t = np.trace(R)
    diag = (t, R[0, 0], R[1, 1], R[2, 2])
    k = int(np.argmax(diag))
    if k == 0:
        s = 2 * math.sqrt(1 + t)
        q = [s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif k == 1:
        s = 2 * math.sqrt(1 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif k == 2:
        s = 2 * math.sqrt(1 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2 * math.sqrt(1 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[0] < 0 else q


# ---------------------------------------------------------------------------------------------- cameras.json


def parse_cameras_json(data: bytes, where: str) -> PoseFile:
    """Our ``cameras.json`` (README "Collections")."""
    doc = load_json(data, where)
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("frames"), list):
        raise InputError(f"{where}: expected {{'version': 1, 'frames': [...]}}")
    units, crs = doc.get("units"), doc.get("crs")
    for key, value in (("units", units), ("crs", crs)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{where}: {key} must be a string or null, got {value!r}")
    frames = []
    for k, frame in enumerate(doc["frames"]):
        if not isinstance(frame, dict):
            raise InputError(f"{where}: frame {k} is not an object")
        missing = [key for key in CAMERAS_JSON_KEYS if key not in frame]
        if missing:
            raise InputError(f"{where}: frame {k} lacks {missing}")
        image = frame["image"]
        if not isinstance(image, str):
            raise InputError(f"{where}: frame {k}: image must be a path, got {image!r}")
        T = matrix(frame["world_to_camera"], f"{image}: world_to_camera", where)
        frames.append(FrameCamera(
            image=f"images/{posixpath.basename(image)}", cam_from_world=T[:3],
            fx=number(frame["fx"], f"{image}: fx", where, positive=True),
            fy=number(frame["fy"], f"{image}: fy", where, positive=True),
            cx=number(frame["cx"], f"{image}: cx", where), cy=number(frame["cy"], f"{image}: cy", where),
            width=size(frame["width"], f"{image}: width", where),
            height=size(frame["height"], f"{image}: height", where)))
    return PoseFile(where, "zipmap", tuple(frames), units, crs)


# ---------------------------------------------------------------------------------------------- transforms.json


def relative_path(value: Any, what: str, where: str) -> str:
    """A path inside the collection folder, normalised (``./images//a.png`` -> ``images/a.png``)."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: {what} must be a non-empty path, got {value!r}")
    path = posixpath.normpath(value.strip().replace("\\", "/"))
    if path.startswith("/") or path == ".." or path.startswith("../") or "://" in value:
        raise InputError(f"{where}: {what} {value!r} must be relative to the collection folder, inside it")
    return path


def parse_transforms_json(data: bytes, where: str) -> PoseFile:
    """nerfstudio ``transforms.json`` (conventions in the module docstring)."""
    doc = load_json(data, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list):
        raise InputError(f"{where}: expected {{'frames': [...]}} (nerfstudio transforms.json)")
    undo = np.eye(4)  # maps the file's world frame back to the original one: w2c_orig = w2c @ undo
    if "applied_transform" in doc:
        A = matrix(doc["applied_transform"], "applied_transform", where, ((3, 4), (4, 4)))
        if orthonormal_error(A[:3, :3]) > ORTHONORMAL_TOL:
            raise InputError(f"{where}: applied_transform is not a rotation and translation")
        undo = A
    frames = []
    for k, frame in enumerate(doc["frames"]):
        if not isinstance(frame, dict):
            raise InputError(f"{where}: frame {k} is not an object")
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise InputError(f"{where}: frame {k} lacks file_path or transform_matrix")
        image = relative_path(frame["file_path"], f"frame {k} file_path", where)
        label = f"frame {k} ({image})"
        merged = {**doc, **frame}  # per-frame intrinsics override the top level
        model = merged.get("camera_model", "OPENCV")
        if model not in NERFSTUDIO_PERSPECTIVE:
            raise InputError(f"{where}: {label}: unsupported camera_model {model!r} "
                             f"(supported: {', '.join(NERFSTUDIO_PERSPECTIVE)})")
        c2w_gl = matrix(frame["transform_matrix"], f"{label}: transform_matrix", where, ((3, 4), (4, 4)))
        problem = rotation_problem(c2w_gl[:3, :3])
        if problem:
            raise InputError(f"{where}: {label}: transform_matrix rotation is not a proper rotation: {problem}")
        w2c = np.linalg.inv(c2w_gl @ GL_FROM_CV) @ undo
        found = {key: number(merged[key], f"{label}: {key}", where, positive=key not in ("cx", "cy"))
                 for key in ("fl_x", "fl_y", "cx", "cy", "camera_angle_x", "camera_angle_y")
                 if merged.get(key) is not None}
        if "fl_x" not in found and "camera_angle_x" not in found:
            raise InputError(f"{where}: {label}: no focal length (fl_x or camera_angle_x)")
        w, h = merged.get("w"), merged.get("h")
        frames.append(FrameCamera(
            image=image, cam_from_world=w2c[:3], fx=found.get("fl_x"), fy=found.get("fl_y"), cx=found.get("cx"),
            cy=found.get("cy"), width=None if w is None else size(w, f"{label}: w", where),
            height=None if h is None else size(h, f"{label}: h", where),
            fov_x=found.get("camera_angle_x"), fov_y=found.get("camera_angle_y")))
    return PoseFile(where, "nerfstudio", tuple(frames))


# ---------------------------------------------------------------------------------------------- COLMAP


@dataclass(frozen=True)
class ColmapCamera:
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def pinhole(self) -> tuple[float, float, float, float]:
        """``fx, fy, cx, cy``; single-focal models give ``fx = fy = f``."""
        p = self.params
        return (p[0], p[0], p[1], p[2]) if self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else p[:4]


@dataclass(frozen=True)
class ColmapImage:
    name: str
    qvec: tuple[float, float, float, float]  # (w, x, y, z)
    tvec: tuple[float, float, float]
    camera_id: int


def colmap_camera(model: str, width: int, height: int, params: Sequence[float], label: str, where: str,
                  ) -> ColmapCamera:
    if model not in COLMAP_SUPPORTED:
        raise InputError(f"{where}: {label}: unsupported camera model {model} "
                         f"(supported: {', '.join(COLMAP_SUPPORTED)})")
    if len(params) != COLMAP_NUM_PARAMS[model]:
        raise InputError(f"{where}: {label}: model {model} takes {COLMAP_NUM_PARAMS[model]} parameters, "
                         f"got {len(params)}")
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: {label}: size {width}x{height} is not positive")
    if not all(math.isfinite(p) for p in params):
        raise InputError(f"{where}: {label}: parameters {list(params)} are not all finite")
    cam = ColmapCamera(model, width, height, tuple(float(p) for p in params))
    fx, fy = cam.pinhole()[:2]
    if fx <= 0 or fy <= 0:
        raise InputError(f"{where}: {label}: focal length {fx, fy} is not positive")
    return cam


def colmap_image(name: str, values: Sequence[float], camera_id: int, label: str, where: str) -> ColmapImage:
    qvec, tvec = tuple(values[:4]), tuple(values[4:7])
    if not all(math.isfinite(v) for v in values) or math.sqrt(sum(q * q for q in qvec)) < 1e-9:
        raise InputError(f"{where}: {label}: pose {list(values)} is not finite or has a zero quaternion")
    if not name:
        raise InputError(f"{where}: {label}: empty image name")
    return ColmapImage(name, qvec, tvec, camera_id)


def parse_colmap_cameras_text(data: bytes, where: str) -> dict[int, ColmapCamera]:
    """``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line, ``#`` comments."""
    cameras = {}
    for lineno, line in enumerate(decode_text(data, where).splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        label = f"line {lineno}"
        try:
            cam_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = [float(p) for p in parts[4:]]
        except (IndexError, ValueError):
            raise InputError(f"{where}: {label}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., "
                             f"got {line.strip()!r}") from None
        if cam_id in cameras:
            raise InputError(f"{where}: {label}: camera {cam_id} defined twice")
        cameras[cam_id] = colmap_camera(model, width, height, params, f"camera {cam_id}", where)
    return cameras


def parse_colmap_images_text(data: bytes, where: str) -> list[ColmapImage]:
    """``images.txt``: per image a line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` and a line of
    ``X Y POINT3D_ID`` triples (possibly empty), as COLMAP reads it: the line after an image line is
    always its points line, blank or not."""
    lines = decode_text(data, where).splitlines()
    images, i = [], 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        parts = line.split(maxsplit=9)  # the name is the rest of the line
        try:
            values = [float(p) for p in parts[1:8]]
            image_id, camera_id, name = int(parts[0]), int(parts[8]), parts[9]
        except (IndexError, ValueError):
            raise InputError(f"{where}: line {i + 1}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, "
                             f"got {line!r}") from None
        if len(values) != 7:
            raise InputError(f"{where}: line {i + 1}: expected 7 pose values")
        points = lines[i + 1].split() if i + 1 < len(lines) else []
        if len(points) % 3 or (points and not is_float(points[-1])):
            raise InputError(f"{where}: line {i + 2}: expected the 2D points of image {image_id} "
                             f"(X Y POINT3D_ID triples, or an empty line)")
        images.append(colmap_image(name, values, camera_id, f"image {image_id} ({name})", where))
        i += 2
    return images


def is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not a text file ({exc})") from exc


class BinaryReader:
    """Little-endian fields from a COLMAP ``.bin`` file; running out of bytes names the file."""

    def __init__(self, data: bytes, where: str):
        self.data, self.where, self.pos = data, where, 0

    def take(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize("<" + fmt)
        if self.pos + n > len(self.data):
            raise InputError(f"{self.where}: truncated or corrupt binary file (ends at byte {len(self.data)} "
                             f"while reading {what})")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += n
        return values

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > len(self.data):
            raise InputError(f"{self.where}: truncated or corrupt binary file (ends at byte {len(self.data)} "
                             f"while reading {what})")
        self.pos += n

    def name(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise InputError(f"{self.where}: truncated or corrupt binary file (no end to {what})")
        raw, self.pos = self.data[self.pos:end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.where}: truncated or corrupt binary file ({what} {raw[:40]!r} is not "
                             f"UTF-8)") from None

    def done(self) -> None:
        if self.pos != len(self.data):
            raise InputError(f"{self.where}: corrupt binary file ({len(self.data) - self.pos} bytes after the "
                             f"last record)")


def parse_colmap_cameras_binary(data: bytes, where: str) -> dict[int, ColmapCamera]:
    """``cameras.bin``: uint64 count, then per camera int32 id, int32 model id, uint64 width, uint64
    height, float64 params (as many as the model takes)."""
    r = BinaryReader(data, where)
    (count,) = r.take("Q", "the camera count")
    cameras = {}
    for k in range(count):
        cam_id, model_id, width, height = r.take("iiQQ", f"camera {k}")
        if model_id not in COLMAP_MODELS:
            raise InputError(f"{where}: camera {cam_id}: unknown camera model id {model_id}")
        model, n = COLMAP_MODELS[model_id]
        if model not in COLMAP_SUPPORTED:  # known size, but not a pinhole we can read
            raise InputError(f"{where}: camera {cam_id}: unsupported camera model {model} "
                             f"(supported: {', '.join(COLMAP_SUPPORTED)})")
        params = r.take("d" * n, f"camera {cam_id}'s parameters")
        if cam_id in cameras:
            raise InputError(f"{where}: camera {cam_id} defined twice")
        cameras[cam_id] = colmap_camera(model, width, height, params, f"camera {cam_id}", where)
    r.done()
    return cameras


def parse_colmap_images_binary(data: bytes, where: str) -> list[ColmapImage]:
    """``images.bin``: uint64 count, then per image int32 id, float64 qw qx qy qz tx ty tz, int32
    camera id, a NUL-terminated name, uint64 number of 2D points and 24 bytes per point (skipped)."""
    r = BinaryReader(data, where)
    (count,) = r.take("Q", "the image count")
    images = []
    for k in range(count):
        (image_id, *values, camera_id) = r.take("i7di", f"image {k}")
        name = r.name(f"the name of image {image_id}")
        (num_points,) = r.take("Q", f"the point count of image {image_id}")
        r.skip(24 * num_points, f"the 2D points of image {image_id}")
        images.append(colmap_image(name, values, camera_id, f"image {image_id} ({name})", where))
    r.done()
    return images


def colmap_pose_file(cameras: Mapping[int, ColmapCamera], images: Sequence[ColmapImage], cameras_where: str,
                     images_where: str) -> PoseFile:
    """Join COLMAP images with their cameras; image names are relative to the ``images/`` folder."""
    frames, seen = [], set()
    for im in images:
        cam = cameras.get(im.camera_id)
        if cam is None:
            raise InputError(f"{images_where}: image {im.name} refers to camera {im.camera_id}, which "
                             f"{cameras_where} lacks")
        if im.name in seen:
            raise InputError(f"{images_where}: image {im.name} appears twice")
        seen.add(im.name)
        fx, fy, cx, cy = cam.pinhole()
        ext = np.concatenate([rotation_from_quaternion(im.qvec), np.asarray(im.tvec, np.float64)[:, None]], 1)
        frames.append(FrameCamera(image=posixpath.join("images", im.name), cam_from_world=ext, fx=fx, fy=fy,
                                  cx=cx, cy=cy, width=cam.width, height=cam.height))
    return PoseFile(images_where, "colmap", tuple(frames))


def parse_colmap(cameras_data: bytes, cameras_where: str, images_data: bytes, images_where: str) -> PoseFile:
    """A COLMAP model from its two files' bytes; ``.bin`` or ``.txt`` is told by each file's name."""
    cameras = (parse_colmap_cameras_binary if cameras_where.endswith(".bin") else parse_colmap_cameras_text)(
        cameras_data, cameras_where)
    images = (parse_colmap_images_binary if images_where.endswith(".bin") else parse_colmap_images_text)(
        images_data, images_where)
    return colmap_pose_file(cameras, images, cameras_where, images_where)


# ---------------------------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class CameraTable:
    """What the writers need: per image its file name, ``cam_from_world`` [3, 4], ``K`` [3, 3], (H, W)."""

    names: tuple[str, ...]
    cam_from_world: np.ndarray  # [S, 3, 4] float64, OpenCV
    intrinsics: np.ndarray  # [S, 3, 3] float64, pixels, centres at +0.5
    sizes: tuple[tuple[int, int], ...]  # (H, W) per image

    @classmethod
    def of(cls, source: Any) -> CameraTable:
        """A CameraTable as is, or one from a Collection (anything with ``names``, ``cam_from_world``,
        ``intrinsics`` and ``image_sizes()``)."""
        if isinstance(source, CameraTable):
            return source
        if getattr(source, "cam_from_world", None) is None or getattr(source, "intrinsics", None) is None:
            raise InputError(f"{getattr(source, 'url', source)!s:.200}: has no cameras to write")
        return cls(tuple(source.names), np.asarray(source.cam_from_world, np.float64),
                   np.asarray(source.intrinsics, np.float64), tuple(tuple(s) for s in source.image_sizes()))


def transforms_json(table: CameraTable, image_folder: str = "images") -> dict:
    """nerfstudio ``transforms.json`` content: shared intrinsics at the top level when all frames agree."""
    per_frame = []
    for name, ext, K, (h, w) in zip(table.names, table.cam_from_world, table.intrinsics, table.sizes):
        c2w_gl = np.linalg.inv(np.concatenate([ext, [[0.0, 0.0, 0.0, 1.0]]])) @ GL_FROM_CV
        per_frame.append(({"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]),
                           "cy": float(K[1, 2]), "w": int(w), "h": int(h)},
                          {"file_path": f"{image_folder}/{name}", "transform_matrix": c2w_gl.tolist()}))
    doc: dict[str, Any] = {"camera_model": "OPENCV"}
    shared = len({json.dumps(intr, sort_keys=True) for intr, _ in per_frame}) == 1
    if shared:
        doc.update(per_frame[0][0])
    doc["frames"] = [frame if shared else {**frame, **intr} for intr, frame in per_frame]
    return doc


def colmap_cameras(table: CameraTable) -> tuple[list[tuple[int, int, int, tuple[float, ...]]], list[int]]:
    """PINHOLE cameras ``(id, W, H, (fx, fy, cx, cy))``, one per distinct size and intrinsics as COLMAP
    shares them, and each image's camera id."""
    ids: dict[tuple, int] = {}
    for K, (h, w) in zip(table.intrinsics, table.sizes):
        key = (int(w), int(h), (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])))
        ids.setdefault(key, len(ids) + 1)
    cameras = [(i, w, h, params) for (w, h, params), i in ids.items()]
    per_image = [ids[(int(w), int(h), (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])))]
                 for K, (h, w) in zip(table.intrinsics, table.sizes)]
    return cameras, per_image


def colmap_poses(table: CameraTable) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(quaternion_from_rotation(ext[:, :3]), np.asarray(ext[:, 3], np.float64)) for ext in table.cam_from_world]


def colmap_text(table: CameraTable) -> dict[str, bytes]:
    """``cameras.txt``, ``images.txt`` (no 2D points) and an empty ``points3D.txt``."""
    cameras, cam_ids = colmap_cameras(table)
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cameras)}"]
    cam_lines += [f"{i} PINHOLE {w} {h} " + " ".join(repr(p) for p in params) for i, w, h, params in cameras]
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(table.names)}"]
    for k, (name, (q, t), cam_id) in enumerate(zip(table.names, colmap_poses(table), cam_ids), 1):
        img_lines += [" ".join([str(k), *(repr(float(v)) for v in (*q, *t)), str(cam_id), name]), ""]
    points = "# 3D point list with one line of data per point:\n# Number of points: 0\n"
    return {"cameras.txt": ("\n".join(cam_lines) + "\n").encode(),
            "images.txt": ("\n".join(img_lines) + "\n").encode(), "points3D.txt": points.encode()}


def colmap_binary(table: CameraTable) -> dict[str, bytes]:
    """``cameras.bin``, ``images.bin`` (no 2D points) and an empty ``points3D.bin``."""
    cameras, cam_ids = colmap_cameras(table)
    cams = struct.pack("<Q", len(cameras)) + b"".join(
        struct.pack("<iiQQ4d", i, COLMAP_MODEL_ID["PINHOLE"], w, h, *params) for i, w, h, params in cameras)
    imgs = [struct.pack("<Q", len(table.names))]
    for k, (name, (q, t), cam_id) in enumerate(zip(table.names, colmap_poses(table), cam_ids), 1):
        imgs.append(struct.pack("<i7di", k, *q, *t, cam_id) + name.encode() + b"\0" + struct.pack("<Q", 0))
    return {"cameras.bin": cams, "images.bin": b"".join(imgs), "points3D.bin": struct.pack("<Q", 0)}


def write_files(files: Mapping[str, bytes], url: str, storage_options: Mapping[str, Any] | None) -> None:
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    for rel, data in files.items():
        folder = posixpath.dirname(posixpath.join(root, rel))
        fs.makedirs(folder, exist_ok=True)
        fs.pipe_file(posixpath.join(root, rel), data)


def write_transforms_json(source: Any, url: str, storage_options: Mapping[str, Any] | None = None,
                          image_folder: str = "images") -> str:
    """Write ``url/transforms.json`` (nerfstudio) for a Collection's or CameraTable's cameras; returns its URL."""
    doc = transforms_json(CameraTable.of(source), image_folder)
    write_files({"transforms.json": json.dumps(doc, indent=1).encode()}, url, storage_options)
    return f"{url.rstrip('/')}/transforms.json"


def write_colmap_text(source: Any, url: str, storage_options: Mapping[str, Any] | None = None,
                      folder: str = "sparse/0") -> str:
    """Write a COLMAP text model under ``url/folder``; returns the folder's URL."""
    files = colmap_text(CameraTable.of(source))
    write_files({posixpath.join(folder, k): v for k, v in files.items()}, url, storage_options)
    return posixpath.join(url.rstrip("/"), folder) if folder else url.rstrip("/")


def write_colmap_binary(source: Any, url: str, storage_options: Mapping[str, Any] | None = None,
                        folder: str = "sparse/0") -> str:
    """Write a COLMAP binary model under ``url/folder``; returns the folder's URL."""
    files = colmap_binary(CameraTable.of(source))
    write_files({posixpath.join(folder, k): v for k, v in files.items()}, url, storage_options)
    return posixpath.join(url.rstrip("/"), folder) if folder else url.rstrip("/")
