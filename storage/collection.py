"""Reading photo collections from a folder or an object-store prefix (any fsspec URL).

The collection format (see README "Collections"):

- ``images/``: ``.png`` / ``.jpg`` / ``.jpeg`` files (any case); frame order = sorted file name.
- optional ``cameras.json``: ``{"version": 1, "units": "m", "crs": null, "frames": [{"image":
  "images/000.png", "width": W, "height": H, "fx", "fy", "cx", "cy", "world_to_camera": 4x4
  row-major}, ...]}``; OpenCV axes, ``world_to_camera`` maps world points into the camera frame,
  pixel centres at +0.5.
- optional ``depth/<image stem>.npy``: float32 z-depth in metres; 0 or non-finite = no data.

Every problem raises :class:`errors.InputError` naming the file and the reason.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CAMERA_KEYS = ("image", "width", "height", "fx", "fy", "cx", "cy", "world_to_camera")


@dataclass(frozen=True)
class Collection:
    """A collection in memory. ``images`` are uint8 ``[S, H, W, 3]``; cameras and depth optional."""

    url: str
    names: tuple[str, ...]
    images: np.ndarray
    cam_from_world: np.ndarray | None = None  # [S, 3, 4] float64
    intrinsics: np.ndarray | None = None  # [S, 3, 3] float64, pixels of the stored images
    depth: np.ndarray | None = None  # [S, H, W] float32, 0 = no data

    @property
    def num_frames(self) -> int:
        return len(self.names)


def _fs(url: str, storage_options: Mapping[str, Any] | None):
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/")


def list_images(url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Image paths under ``url/images/`` in frame order (sorted file name)."""
    fs, root = _fs(url, storage_options)
    folder = posixpath.join(root, "images")
    try:
        entries = fs.ls(folder, detail=False)
    except FileNotFoundError:
        raise InputError(f"{url}: no images/ folder") from None
    names = sorted(p for p in entries if posixpath.splitext(p)[1].lower() in IMAGE_EXTENSIONS)
    if not names:
        raise InputError(f"{url}/images: no .png/.jpg/.jpeg files")
    return names


def read_image(fs, path: str, url: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(fs.cat_file(path))) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{url}/images/{posixpath.basename(path)}: not a readable image ({exc})") from exc


def _parse_cameras(doc: Any, names: list[str], sizes: list[tuple[int, int]], url: str):
    where = f"{url}/cameras.json"
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("frames"), list):
        raise InputError(f"{where}: expected {{'version': 1, 'frames': [...]}}")
    by_image = {}
    for k, frame in enumerate(doc["frames"]):
        missing = [key for key in CAMERA_KEYS if key not in frame]
        if missing:
            raise InputError(f"{where}: frame {k} lacks {missing}")
        by_image[posixpath.basename(frame["image"])] = frame
    ext, K = [], []
    for name, (h, w) in zip(names, sizes):
        frame = by_image.get(posixpath.basename(name))
        if frame is None:
            raise InputError(f"{where}: no camera for images/{posixpath.basename(name)}")
        if (frame["width"], frame["height"]) != (w, h):
            raise InputError(f"{where}: {frame['image']} is {w}x{h} but the camera says "
                             f"{frame['width']}x{frame['height']}")
        T = np.asarray(frame["world_to_camera"], dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise InputError(f"{where}: {frame['image']}: world_to_camera must be a finite 4x4 matrix")
        ext.append(T[:3])
        K.append([[frame["fx"], 0.0, frame["cx"]], [0.0, frame["fy"], frame["cy"]], [0.0, 0.0, 1.0]])
    return np.stack(ext), np.asarray(K, dtype=np.float64)


def read_collection(url: str, storage_options: Mapping[str, Any] | None = None, with_depth: bool = True,
                    ) -> Collection:
    """Read images, and cameras and depth where present."""
    fs, root = _fs(url, storage_options)
    paths = list_images(url, storage_options)
    images = [read_image(fs, p, url) for p in paths]
    sizes = [im.shape[:2] for im in images]
    if len(set(sizes)) > 1:
        raise InputError(f"{url}/images: images differ in size {sorted(set(sizes))}")
    cams = K = depth = None
    cam_path = posixpath.join(root, "cameras.json")
    if fs.exists(cam_path):
        try:
            doc = json.loads(fs.cat_file(cam_path))
        except json.JSONDecodeError as exc:
            raise InputError(f"{url}/cameras.json: not valid JSON ({exc})") from exc
        cams, K = _parse_cameras(doc, paths, sizes, url)
    if with_depth and fs.exists(posixpath.join(root, "depth")):
        maps = []
        for p in paths:
            stem = posixpath.splitext(posixpath.basename(p))[0]
            dpath = posixpath.join(root, "depth", stem + ".npy")
            try:
                d = np.load(io.BytesIO(fs.cat_file(dpath)), allow_pickle=False)
            except FileNotFoundError:
                raise InputError(f"{url}/depth/{stem}.npy: missing (the collection has a depth/ folder)") from None
            except ValueError as exc:
                raise InputError(f"{url}/depth/{stem}.npy: not a numpy array ({exc})") from exc
            if d.shape != sizes[0]:
                raise InputError(f"{url}/depth/{stem}.npy: shape {d.shape}, image is {sizes[0]}")
            maps.append(np.where(np.isfinite(d), d, 0).astype(np.float32))
        depth = np.stack(maps)
    names = tuple(posixpath.basename(p) for p in paths)
    return Collection(url, names, np.stack(images), cams, K, depth)
