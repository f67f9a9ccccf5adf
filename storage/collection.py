"""Reading photo collections from a folder or an object-store prefix (any fsspec URL).

:func:`read_collection` is the one entry point. It detects the pose format at the collection's
root, preferring, when several are present, in this order (``Collection.source_format``):

1. ``cameras.json``, ours (README "Collections"): images in ``images/``;
2. nerfstudio ``transforms.json``: each frame's ``file_path`` is relative to the collection folder
   (commonly ``images/frame_00001.png``; a path without extension gets ``.png``, as Blender scenes);
3. a COLMAP sparse model, the first of ``sparse/0/``, ``sparse/`` and the root that holds both
   ``cameras.{bin,txt}`` and ``images.{bin,txt}`` (``.bin`` preferred; ``points3D`` is not read):
   images in ``images/``; models ``sparse/1`` and beyond are not read;
4. none: images only, from ``images/``.

``storage.formats`` holds the conventions of each format and its conversion to ours: OpenCV axes,
``cam_from_world`` float64, intrinsics in pixels with pixel centres at +0.5 (nerfstudio and COLMAP
use that convention too, so no shift is applied); lens distortion is ignored.

Images: ``.png`` / ``.jpg`` / ``.jpeg`` (any case) directly in ``images/`` (or, for nerfstudio, the
files the frames name), decoded by :func:`storage.images.decode_image` (EXIF orientation applied,
any colour mode to 8-bit RGB, bombs and truncation rejected). Frame order = sorted file name;
sizes may differ between images. Every image in ``images/`` needs a camera when there is a pose
file, and every camera needs its image: a camera whose image is not there raises naming the image
(a lost photo is never dropped silently; COLMAP images must lie directly in ``images/``).

Camera and image sizes. Each pose states (or implies) the image size its intrinsics refer to:

- same size as the decoded, EXIF-oriented image: used as is;
- the raw stored size but not the oriented one (EXIF orientations 5-8 swap width and height): the
  poses were computed on the raw pixel grid (COLMAP, for one, ignores EXIF), so that image is kept
  in its raw orientation. For orientations that keep the size (2-4) the two cannot be told apart
  and the oriented image is used;
- a uniform scale of either (downscaled images, each side within a pixel of the scaled size):
  intrinsics are scaled by the per-axis factors, exact for resizes that map image edges to edges;
- anything else raises, naming the image, the pose file and both sizes.

Depth: ``depth/<image stem>.npy`` (float32 z-depth in metres, 0 or non-finite = no data) for every
format, when the folder exists; each map must match its image's size.

Every problem raises :class:`errors.InputError` starting with the file's URL and the reason, except
object-store and network faults (timeouts, lost connections, 5xx, throttling), which raise
:class:`errors.TransientError` (``errors.io_error`` decides) so that a batch retries them.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from errors import InputError, ZipMapError, io_error

from .formats import FrameCamera, PoseFile, parse_cameras_json, parse_colmap, parse_transforms_json
from .images import DEFAULT_MAX_PIXELS, SWAPS_AXES, decode_image
from .urls import filesystem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SOURCE_FORMATS = ("zipmap", "nerfstudio", "colmap", "images")
COLMAP_FOLDERS = ("sparse/0", "sparse", "")
FETCH_BATCH = 16  # files fetched concurrently (object stores are latency-bound); bounds the bytes held


@dataclass(frozen=True)
class Collection:
    """A collection in memory; cameras and depth optional, image sizes may differ between views."""

    url: str
    names: tuple[str, ...]  # image file names (basename), frame order
    images: tuple[np.ndarray, ...]  # uint8 [H_i, W_i, 3] per view
    cam_from_world: np.ndarray | None = None  # [S, 3, 4] float64, OpenCV axes, world -> camera
    intrinsics: np.ndarray | None = None  # [S, 3, 3] float64, pixels of the decoded images, centres at +0.5
    depth: tuple[np.ndarray, ...] | None = None  # float32 [H_i, W_i] per view, 0 = no data
    crs: str | None = None
    units: str | None = None  # "m" when the pose file says so; None = unknown (nerfstudio, COLMAP)
    source_format: str = "images"  # "zipmap" | "nerfstudio" | "colmap" | "images"
    image_info: tuple[dict, ...] = ()  # per view: decode_image's info plus "path" (the file's URL)

    @property
    def num_frames(self) -> int:
        return len(self.names)

    def image_sizes(self) -> list[tuple[int, int]]:
        """``(H, W)`` per view."""
        return [im.shape[:2] for im in self.images]

    def _same_size(self, what: str) -> None:
        sizes = self.image_sizes()
        if len(set(sizes)) > 1:
            first = {}
            for name, s in zip(self.names, sizes):
                first.setdefault(s, name)
            listed = ", ".join(f"{w}x{h} ({name})" for (h, w), name in first.items())
            raise InputError(f"{self.url}: cannot stack {what}: images differ in size: {listed}")

    def stacked_images(self) -> np.ndarray:
        """uint8 ``[S, H, W, 3]``; raises naming the collection when the images differ in size."""
        self._same_size("images")
        return np.stack(self.images)

    def stacked_depth(self) -> np.ndarray:
        """float32 ``[S, H, W]``; raises when there is no depth or the images differ in size."""
        if self.depth is None:
            raise InputError(f"{self.url}: no depth maps (depth/ folder)")
        self._same_size("depth maps")
        return np.stack(self.depth)


def _names_in(fs, folder: str) -> set[str] | None:
    """Entry names directly in ``folder``; None when it does not exist. Other failures raise
    :class:`errors.TransientError` (object-store faults) or :class:`errors.InputError`."""
    try:
        return {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ZipMapError:
        raise
    except Exception as exc:  # noqa: BLE001  (fsspec backends raise their own types; io_error sorts them)
        raise io_error(exc, fs.unstrip_protocol(folder), "cannot be listed") from exc


def _is_image(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Image paths under ``url/images/`` in frame order (sorted file name)."""
    fs, root = filesystem(url, storage_options)
    names = _names_in(fs, posixpath.join(root, "images"))
    if names is None:
        raise InputError(f"{url.rstrip('/')}: no images/ folder")
    found = sorted(n for n in names if _is_image(n))
    if not found:
        raise InputError(f"{url.rstrip('/')}/images: no .png/.jpg/.jpeg files")
    return [posixpath.join(root, "images", n) for n in found]


def _fetch(fs, paths: Sequence[str]) -> Iterator[bytes | Exception]:
    """Each file's bytes, or the exception reading it raised, in order, ``FETCH_BATCH`` files in flight at a time."""
    def one(path):
        try:
            return fs.cat_file(path)
        except Exception as exc:  # noqa: BLE001  (the consumer classifies it: errors.io_error)
            return exc

    with ThreadPoolExecutor(max_workers=FETCH_BATCH) as pool:
        for start in range(0, len(paths), FETCH_BATCH):
            batch = paths[start:start + FETCH_BATCH]
            yield from pool.map(one, batch)


def _read_file(fs, path: str, where: str) -> bytes:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise InputError(f"{where}: missing") from None
    except Exception as exc:  # noqa: BLE001  (transient object-store faults vs bad input: errors.io_error)
        raise io_error(exc, where) from exc


def pose_file(top: set[str], names_in: Callable[[str], set[str] | None]) -> tuple[str, tuple[str, ...]] | None:
    """Which pose file a collection root uses, from listings alone: ``(source format, paths relative to
    the root)`` — ``cameras.json`` first, then ``transforms.json``, then a COLMAP model (``cameras`` and
    ``images`` ``.bin``/``.txt``) in ``sparse/0/``, ``sparse/`` or the root — or None (images only).
    ``top`` holds the root's entry names, ``names_in(rel)`` those of a folder (None if it is missing)."""
    if "cameras.json" in top:
        return "zipmap", ("cameras.json",)
    if "transforms.json" in top:
        return "nerfstudio", ("transforms.json",)
    for folder in COLMAP_FOLDERS:
        names = names_in(folder) if folder else top
        if not names:
            continue
        cams = next((f"cameras{ext}" for ext in (".bin", ".txt") if f"cameras{ext}" in names), None)
        imgs = next((f"images{ext}" for ext in (".bin", ".txt") if f"images{ext}" in names), None)
        if cams and imgs:
            return "colmap", (posixpath.join(folder, cams), posixpath.join(folder, imgs))
    return None


def _find_pose_file(fs, root: str, url: str, top: set[str]) -> PoseFile | None:
    """The preferred pose file at the collection root, parsed; None for an images-only collection."""
    def names_in(rel: str) -> set[str] | None:  # no listing call for a folder the root does not have
        return _names_in(fs, posixpath.join(root, rel)) if rel.split("/")[0] in top else None

    found = pose_file(top, names_in)
    if found is None:
        return None
    kind, rel = found
    where = [f"{url}/{r}" for r in rel]
    data = [_read_file(fs, posixpath.join(root, r), w) for r, w in zip(rel, where)]
    if kind == "zipmap":
        return parse_cameras_json(data[0], where[0])
    if kind == "nerfstudio":
        return parse_transforms_json(data[0], where[0])
    return parse_colmap(data[0], where[0], data[1], where[1])


def _image_files(fs, root: str, url: str, poses: PoseFile | None) -> list[tuple[str, FrameCamera | None]]:
    """``(path relative to the root, its camera)`` per image, in frame order (sorted file name)."""
    listings: dict[str, set[str] | None] = {}

    def listing(folder: str) -> set[str] | None:
        if folder not in listings:
            listings[folder] = _names_in(fs, posixpath.join(root, folder) if folder else root)
        return listings[folder]

    in_images = listing("images")
    by_path: dict[str, FrameCamera] = {}
    if poses is not None:
        for frame in poses.frames:
            path = frame.image
            if poses.source_format == "nerfstudio":
                folder, name = posixpath.split(path)
                present = listing(folder) or set()
                if name not in present and not posixpath.splitext(name)[1] and f"{name}.png" in present:
                    path = f"{path}.png"  # Blender scenes name frames without their extension
                elif name not in present:
                    raise InputError(f"{url}/{path}: missing (frame of {poses.where})")
            if path in by_path:
                raise InputError(f"{poses.where}: two cameras for {path}")
            by_path[path] = frame
    if poses is None or poses.source_format != "nerfstudio":
        if in_images is None:
            raise InputError(f"{url}: no images/ folder")
        paths = [f"images/{n}" for n in in_images if _is_image(n)]
        if not paths:
            raise InputError(f"{url}/images: no .png/.jpg/.jpeg files")
        present = set(paths)
        for path in by_path:  # a camera whose image is not there: a lost photo, never dropped silently
            if path not in present:
                folder, name = posixpath.split(path)
                why = ("missing (images are read from images/, not its subfolders)" if folder != "images" else
                       "not a .png/.jpg/.jpeg image" if name in in_images else "missing")
                raise InputError(f"{url}/{path}: {why} (its camera is in {poses.where})")
    else:  # the frames name the images; any image in images/ must be one of them
        paths = list(by_path) + [f"images/{n}" for n in (in_images or ()) if _is_image(n)
                                 and f"images/{n}" not in by_path]
    files = sorted(set(paths), key=lambda p: (posixpath.basename(p), p))
    seen = {}
    for path in files:
        name = posixpath.basename(path)
        if name in seen:
            raise InputError(f"{poses.where if poses else url}: two images named {name} ({seen[name]}, {path})")
        seen[name] = path
        if poses is not None and path not in by_path:
            raise InputError(f"{poses.where}: no camera in {posixpath.basename(poses.where)} for {path}")
    return [(p, by_path.get(p)) for p in files]


def _scale_to(cam_w: int, cam_h: int, w: int, h: int) -> tuple[float, float] | None:
    """Per-axis factors from a ``cam_w x cam_h`` camera to a ``w x h`` image when the resize is uniform
    (each side within one pixel of the other side's factor), else None."""
    sx, sy = w / cam_w, h / cam_h
    if abs(cam_w * sy - w) <= 1 and abs(cam_h * sx - h) <= 1:
        return sx, sy
    return None


def _fit_camera(frame: FrameCamera, data: bytes, rgb: np.ndarray, info: dict, where: str, pose_where: str,
                max_pixels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The image as the camera saw it and the intrinsics in its pixels (rules in the module docstring)."""
    h, w = rgb.shape[:2]
    if frame.width is None or frame.height is None:
        return rgb, frame.intrinsics(w, h), info
    cam_w, cam_h = frame.width, frame.height
    raw_differs = info["exif_transposed"] and info["exif_orientation"] in SWAPS_AXES
    candidates = [("oriented", w, h)] + ([("raw", h, w)] if raw_differs else [])
    choice = next(((kind, (1.0, 1.0)) for kind, iw, ih in candidates if (iw, ih) == (cam_w, cam_h)), None)
    if choice is None:
        choice = next(((kind, s) for kind, iw, ih in candidates if (s := _scale_to(cam_w, cam_h, iw, ih))), None)
    if choice is None:
        raw = f" (raw {info['raw_width']}x{info['raw_height']} before EXIF orientation)" if raw_differs else ""
        raise InputError(f"{where}: image is {w}x{h} pixels{raw} but {pose_where} gives its camera as "
                         f"{cam_w}x{cam_h}, not a uniform scale of it")
    kind, (sx, sy) = choice
    if kind == "raw":  # the poses were computed on the stored pixel grid
        rgb, info = decode_image(data, where, max_pixels, apply_exif=False)
    K = frame.intrinsics(cam_w, cam_h) * np.array([[sx], [sy], [1.0]])
    return rgb, K, info


def _read_depth(fs, root: str, url: str, names: Sequence[str], sizes: Sequence[tuple[int, int]],
                ) -> tuple[np.ndarray, ...]:
    stems = [posixpath.splitext(n)[0] for n in names]
    paths = [posixpath.join(root, "depth", f"{stem}.npy") for stem in stems]
    maps = []
    for data, stem, shape in zip(_fetch(fs, paths), stems, sizes):
        where = f"{url}/depth/{stem}.npy"
        if isinstance(data, FileNotFoundError):
            raise InputError(f"{where}: missing (the collection has a depth/ folder)")
        if isinstance(data, Exception):
            raise io_error(data, where) from data
        try:
            d = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{where}: not a numpy array ({exc})") from exc
        if d.shape != tuple(shape):
            raise InputError(f"{where}: shape {d.shape}, image is {tuple(shape)}")
        if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
            raise InputError(f"{where}: dtype {d.dtype} is not numeric")
        maps.append(np.where(np.isfinite(d), d, 0).astype(np.float32))
    return tuple(maps)


def read_collection(url: str, storage_options: Mapping[str, Any] | None = None, with_depth: bool = True,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Collection:
    """Read a collection's images, and cameras and depth where present (formats in the module docstring).

    ``max_pixels`` bounds each image (width x height, checked before decoding)."""
    url = url.rstrip("/") or url
    fs, root = filesystem(url, storage_options)
    top = _names_in(fs, root)
    if top is None:
        raise InputError(f"{url}: no such folder")
    poses = _find_pose_file(fs, root, url, top)
    files = _image_files(fs, root, url, poses)
    names, images, infos, exts, Ks = [], [], [], [], []
    for (rel, frame), data in zip(files, _fetch(fs, [posixpath.join(root, rel) for rel, _ in files])):
        where = f"{url}/{rel}"
        if isinstance(data, Exception):  # missing or unreadable: InputError; an object-store fault: TransientError
            raise io_error(data, where) from data
        rgb, info = decode_image(data, where, max_pixels)
        if frame is not None:
            rgb, K, info = _fit_camera(frame, data, rgb, info, where, poses.where, max_pixels)
            exts.append(frame.cam_from_world)
            Ks.append(K)
        names.append(posixpath.basename(rel))
        images.append(rgb)
        infos.append({**info, "path": where})
    depth = None
    if with_depth and "depth" in top:
        depth = _read_depth(fs, root, url, names, [im.shape[:2] for im in images])
    return Collection(
        url=url, names=tuple(names), images=tuple(images),
        cam_from_world=np.stack(exts).astype(np.float64) if poses is not None else None,
        intrinsics=np.stack(Ks).astype(np.float64) if poses is not None else None,
        depth=depth, crs=poses.crs if poses else None, units=poses.units if poses else None,
        source_format=poses.source_format if poses else "images", image_info=tuple(infos))
