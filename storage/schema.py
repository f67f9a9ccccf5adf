"""The reconstruction store's schema: which arrays, dims, chunks and attributes ``/views`` and ``/volume``
hold (documented in ``docs/output-format.md``), written from plain arrays.

- :func:`begin_store`: a new store at ``OUT/<collection_id>.zarr`` with the root attributes of the run.
- :func:`write_views`: the per-view group in one go.
- :class:`VolumeWriter`: the volume group, then chunk after chunk in a writer thread while the caller
  computes the next one (Zarr's bookkeeping, compression and I/O overlap the fusion's arithmetic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .urls import join
from .zarr_store import ReconstructionStore, Variable

VOLUME_CHUNK = 64  # voxels per side of a volume chunk
VIEW_CHUNK_BYTES = 1 << 20  # image-sized arrays: whole views per chunk, about 1 MiB per chunk


def attrs(long_name: str, units: str | None = None, **extra) -> dict:
    out = {"long_name": long_name, **extra}
    if units is not None:
        out["units"] = units
    return out


def view_chunks(data: np.ndarray) -> tuple[int, ...]:
    """Chunks of ``[view, ...]`` arrays: whole views, as many per chunk as fit in ``VIEW_CHUNK_BYTES`` (at
    least one). Chunks near 1 MiB keep object-store requests few and still let a reader fetch few views."""
    per_view = max(1, data[:1].nbytes)
    return (int(min(len(data), max(1, VIEW_CHUNK_BYTES // per_view))), *data.shape[1:])


def begin_store(out: str, collection_id: str, root_attrs: Mapping[str, Any], storage_options: dict | None = None,
                run_id: str | None = None, *, claim) -> ReconstructionStore:
    """Start ``OUT/<collection_id>.zarr`` (``zipmap_status = "writing"``) with the run's root attributes, under
    ``claim`` (``storage.claims``: this run's claim on the output, checked before every write)."""
    store = ReconstructionStore(join(out, f"{collection_id}.zarr"), storage_options, run_id=run_id, claim=claim)
    store.begin({"title": f"ZipMap reconstruction of {collection_id}", "Conventions": "CF-1.11", **root_attrs})
    return store


def write_views(store: ReconstructionStore, *, names: Sequence[str], depth: np.ndarray, depth_conf: np.ndarray,
                images: np.ndarray, world_points: np.ndarray, origin: np.ndarray, intrinsics: np.ndarray,
                world_to_camera: np.ndarray, predicted_world_to_camera: np.ndarray,
                rotation_error: np.ndarray | None, position_error: np.ndarray | None,
                pose_flagged: np.ndarray | None, units: str) -> None:
    """``/views``: per-view predictions at the network's input size (``[S, h, w]`` depth and confidence,
    ``[S, h, w, 3]`` images and world points relative to ``origin``, ``[S, 4, 4]`` absolute cameras)."""
    S = len(depth)
    u = units
    nan = np.full(S, np.nan, dtype=np.float32)
    per_view = {
        "view": Variable(("view",), np.arange(S, dtype=np.int32), attrs("view index (frame order)")),
        "image_name": Variable(("view",), np.asarray(names, dtype=str), attrs("image file name")),
        "depth": Variable(("view", "y", "x"), depth.astype(np.float32),
                          attrs("depth along the camera's optical axis", u, coordinates="image_name"),
                          view_chunks(depth)),
        "depth_conf": Variable(("view", "y", "x"), depth_conf.astype(np.float32),
                               attrs("depth confidence (higher is more confident, >= 1)", "1"),
                               view_chunks(depth_conf)),
        "image": Variable(("view", "y", "x", "channel"), images,
                          attrs("image as seen by the network (resized, cropped), sRGB", "1"), view_chunks(images)),
        "world_points": Variable(("view", "y", "x", "xyz"), world_points,
                                 attrs("world position of each pixel, relative to the root attribute origin", u,
                                       origin=np.asarray(origin).tolist()), view_chunks(world_points)),
        "intrinsics": Variable(("view", "row3", "col3"), intrinsics,
                               attrs("camera matrix K in pixels of depth/image (pixel centres at +0.5)", "pixel")),
        "world_to_camera": Variable(("view", "row4", "col4"), world_to_camera,
                                    attrs("world-to-camera transform, OpenCV axes, absolute world frame", u,
                                          comment="the given poses when the collection has them, else predicted")),
        "predicted_world_to_camera": Variable(("view", "row4", "col4"), predicted_world_to_camera,
                                              attrs("predicted world-to-camera transform (Sim(3)-aligned to the "
                                                    "given poses when there are any)", u)),
        "rotation_error": Variable(("view",), nan if rotation_error is None else rotation_error.astype(np.float32),
                                   attrs("angle between predicted and given camera rotation", "degree")),
        "position_error": Variable(("view",), nan if position_error is None else position_error.astype(np.float32),
                                   attrs("distance between predicted and given camera centre", u)),
        "pose_flagged": Variable(("view",), np.zeros(S, bool) if pose_flagged is None else pose_flagged.astype(bool),
                                 attrs("predicted pose disagrees with the given pose beyond the thresholds")),
    }
    store.write_group("views", per_view, {"description": "per-view predictions at the network's input size"})


class VolumeWriter:
    """``/volume`` written as the fusion produces it: the group's metadata first (while the first chunk is
    computed), then chunk k while chunk k+1 is computed, in order, on one writer thread.

        with VolumeWriter(store, axes, shape, chunk, attrs) as writer:
            fuse(..., on_chunk=writer.write)          # write(region, {"tsdf", "weight", "rgb"})
    """

    def __init__(self, store: ReconstructionStore, axes: Mapping[str, np.ndarray], shape: tuple[int, int, int],
                 chunk: int, group_attrs: Mapping[str, Any], units: str):
        nz, ny, nx = shape
        c = chunk
        self.store = store
        self.variables = {
            **{name: Variable((name,), axes[name], attrs(f"{name} of voxel centres, world frame", units,
                                                         axis=name.upper())) for name in "xyz"},
            "tsdf": Variable(("z", "y", "x"), None, attrs("truncated signed distance / truncation (positive in "
                                                          "front of surfaces, NaN unobserved)", "1"),
                             (c, c, c), (nz, ny, nx), np.float16),
            "weight": Variable(("z", "y", "x"), None, attrs("sum of confidence weights of the observations", "1"),
                               (c, c, c), (nz, ny, nx), np.float32, 0.0),
            "rgb": Variable(("z", "y", "x", "channel"), None,
                            attrs("weighted mean colour of the observations within the truncation band (0 where "
                                  "none), sRGB", "1"), (c, c, c, 3), (nz, ny, nx, 3), np.uint8),
        }
        self.group_attrs = dict(group_attrs)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __enter__(self) -> VolumeWriter:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-write")
        self._pending.append(self._pool.submit(self.store.write_group, "volume", self.variables, self.group_attrs))
        return self

    def write(self, region: Sequence[slice], arrays: Mapping[str, np.ndarray]) -> None:
        """Queue one chunk; first surfaces the previous write's error, so no more work is done after one."""
        if self._pending:
            self._pending.pop().result()
        self._pending.append(self._pool.submit(self._write_chunk, tuple(region), dict(arrays)))

    def _write_chunk(self, region: tuple, arrays: Mapping[str, np.ndarray]) -> None:
        self.store.write_regions("volume", {"tsdf": (region, arrays["tsdf"].astype(np.float16)),
                                            "weight": (region, arrays["weight"]),
                                            "rgb": (region + (slice(None),), arrays["rgb"])})

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._pending and exc_type is None:
                self._pending.pop().result()
        finally:
            self._pool.shutdown(wait=True)


__all__ = ["VOLUME_CHUNK", "VIEW_CHUNK_BYTES", "attrs", "view_chunks", "begin_store", "write_views", "VolumeWriter"]
