"""Tables for validation and run summaries: the manifest of a batch and the per-image table of a collection.

- A **manifest** (CSV or Parquet, local or any fsspec URL) lists the collections of a batch, one row
  each, with at least ``collection_id`` and ``source`` (the collection's URL); extra columns are kept.
- The **image table** of a collection has one row per image: file facts (``path``, ``file_size``,
  ``width``, ``height``, ``format``, ``mode``) and, when poses are given, the intrinsics and pose
  sanity numbers (``rotation_orthonormal_error``, ``rotation_det``, camera centre).
"""

from __future__ import annotations

import io
import posixpath
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from errors import InputError, StorageError, ZipMapError, io_error
from pose_rules import orthonormal_error, rotation_det

from .collection import Collection
from .urls import filesystem, is_local, redact, storage_errors

MANIFEST_COLUMNS = ("collection_id", "source")


def read_manifest(url: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The manifest as a DataFrame (``.parquet``/``.pq`` read as Parquet, anything else as CSV)."""
    fs, path = filesystem(url, storage_options)
    try:
        with storage_errors(url):
            data = fs.cat_file(path)
    except FileNotFoundError:
        raise InputError(f"{redact(url)}: manifest not found") from None
    except ZipMapError:
        raise
    except Exception as exc:  # noqa: BLE001  (object-store faults -> TransientError, the rest InputError)
        raise io_error(exc, redact(url), "cannot read the manifest") from exc
    ext = posixpath.splitext(path)[1].lower()
    try:
        if ext in (".parquet", ".pq"):
            df = pd.read_parquet(io.BytesIO(data))
        else:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # pandas/pyarrow raise many types for a broken file  # noqa: BLE001
        raise InputError(f"{redact(url)}: not a readable {'Parquet' if ext in ('.parquet', '.pq') else 'CSV'} "
                         f"manifest ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{redact(url)}: manifest lacks the column(s) {missing}; it has {list(df.columns)}")
    for column in MANIFEST_COLUMNS:
        df[column] = df[column].map(lambda v: v.strip() if isinstance(v, str) else v)
    return df.reset_index(drop=True)


def write_table(df: pd.DataFrame, url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``df`` as Parquet (``.parquet``) or CSV at ``url``; returns the URL."""
    fs, path = filesystem(url, storage_options)
    buf = io.BytesIO()
    if path.endswith(".parquet"):
        df.to_parquet(buf, index=False)
    else:
        df.to_csv(buf, index=False)
    try:
        _put(fs, path, url, buf.getvalue())
    except ZipMapError:
        raise
    except Exception as exc:  # noqa: BLE001  (a full disk names the file; object-store faults -> TransientError)
        raise io_error(exc, redact(url), "cannot be written", StorageError) from exc
    return url


def _put(fs, path: str, url: str, data: bytes) -> None:
    with storage_errors(url):
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        if is_local(url):  # a full disk must not leave a truncated table where the old one (or none) was
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                fs.pipe_file(tmp, data)
                fs.mv(tmp, path)
            finally:
                if fs.exists(tmp):
                    fs.rm(tmp)
        else:  # an object-store PUT is atomic: the object appears whole or not at all
            fs.pipe_file(path, data)


def image_table(coll: Collection, collection_id: str) -> pd.DataFrame:
    """One row per image of ``coll`` (see the module docstring)."""
    S = coll.num_frames
    info = list(coll.image_info) or [{} for _ in range(S)]
    rows = []
    for i in range(S):
        h, w = coll.images[i].shape[:2]
        meta = info[i]
        row = {"collection_id": collection_id, "image": coll.names[i], "path": redact(meta.get("path", "")),
               "file_size": int(meta.get("file_size", 0)), "width": int(meta.get("width", w)),
               "height": int(meta.get("height", h)), "format": str(meta.get("format") or ""),
               "mode": str(meta.get("mode") or ""), "has_pose": coll.cam_from_world is not None}
        if coll.cam_from_world is not None:
            K, T = coll.intrinsics[i], coll.cam_from_world[i]
            R = T[:3, :3]
            centre = -R.T @ T[:3, 3]
            with np.errstate(invalid="ignore"):
                row.update(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2],
                           rotation_orthonormal_error=orthonormal_error(R), rotation_det=rotation_det(R),
                           camera_x=centre[0], camera_y=centre[1], camera_z=centre[2])
        else:
            row.update({k: float("nan") for k in ("fx", "fy", "cx", "cy", "rotation_orthonormal_error",
                                                  "rotation_det", "camera_x", "camera_y", "camera_z")})
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["read_manifest", "write_table", "image_table", "MANIFEST_COLUMNS"]
