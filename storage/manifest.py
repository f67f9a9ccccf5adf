"""Manifests from buckets: every collection under a prefix, one row each.

    zipmap manifest SRC_PREFIX OUT.parquet [--since TIME]

A **collection root** is a folder under the prefix (at any depth, or the prefix itself) that holds an
``images/`` folder with at least one image (``.png``/``.jpg``/``.jpeg``, any case). Its pose file
decides the ``format`` column: ``cameras.json`` (``zipmap``), ``transforms.json`` (``nerfstudio``), a
COLMAP model in ``sparse/0/``, ``sparse/`` or the root (``colmap``), none (``images``). Folders inside
a collection are never collections of their own. Skipped while listing: hidden folders (a name starting
with ``.``), run folders (a name starting with ``_``, such as ``_runs``), Zarr outputs (``*.zarr``); a
folder that has a pose file but no images is reported (:attr:`Listing.skipped`) and left out.

``collection_id`` is the collection's path relative to the prefix, each part made safe (letters,
digits, ``.``, ``_``, ``-``; anything else becomes ``_``) and the parts joined with ``--``
(``district 4/block#7`` -> ``district_4--block_7``); ids that would still collide get a short hash of
the full relative path appended, so every row has a distinct, path-traversal-free id.

``modified`` is the newest modification time (UTC) of any file of the collection; ``since`` keeps the
collections changed after a time, so a scheduled run picks up only what is new.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from errors import InputError, ZipMapError, io_error

from .collection import IMAGE_EXTENSIONS, pose_file
from .urls import filesystem, join, redact, safe_id, storage_errors

MANIFEST_LIST_COLUMNS = ("collection_id", "source", "format", "num_images", "modified")
ID_SEPARATOR = "--"
MAX_ID = 200
POSE_FILES = ("cameras.json", "transforms.json")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass
class Listing:
    """What :func:`list_collections` found: the manifest rows and the folders left out, with why."""

    table: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)


def parse_since(value: str | dt.datetime | None, now: dt.datetime | None = None) -> pd.Timestamp | None:
    """``--since``: an ISO-8601 time (``2026-11-24``, ``2026-11-24T02:00Z``; no zone means UTC) or an age
    (``90m``, ``24h``, ``7d``, ``2w``) counted back from now."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        ts = pd.Timestamp(value)
    else:
        match = _DURATION.match(str(value))
        if match:
            now = pd.Timestamp(now or dt.datetime.now(dt.UTC))
            now = now.tz_localize("UTC") if now.tzinfo is None else now
            return now - pd.Timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})
        try:
            ts = pd.Timestamp(str(value))
        except ValueError as exc:
            raise InputError(f"--since {value!r}: not a time (use ISO 8601 such as 2026-11-24T02:00Z, or an "
                             f"age such as 24h or 7d)") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _modified(info: Mapping[str, Any]) -> pd.Timestamp | None:
    """A listing entry's modification time, UTC (local files: ``mtime``; s3fs: ``LastModified``)."""
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return pd.Timestamp(value, unit="s", tz="UTC")
        ts = pd.Timestamp(value)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return None


def _skipped_part(part: str) -> bool:
    return part.startswith(".") or part.startswith("_") or part.lower().endswith(".zarr")


def _format(files: Mapping[str, set[str]], root: str) -> str:
    """The collection's ``source_format`` as ``read_collection`` will see it (same rule, from the listing)."""
    found = pose_file(files.get(root, set()), lambda rel: files.get(posixpath.join(root, rel)))
    return found[0] if found else "images"


def _make_ids(rel_paths: list[str], prefix_name: str) -> list[str]:
    """Safe, distinct ids from relative paths (see the module docstring)."""
    def base(rel: str) -> str:
        parts = [p for p in rel.split("/") if p] or [prefix_name]
        ident = ID_SEPARATOR.join(safe_id(p) for p in parts)
        return ident if len(ident) <= MAX_ID else ident[:MAX_ID - 9] + "-" + _hash(rel)

    ids = [base(r) for r in rel_paths]
    counts = pd.Series(ids).value_counts()
    out = []
    for rel, ident in zip(rel_paths, ids):
        if counts[ident] > 1:
            ident = ident[:MAX_ID - 9] + "-" + _hash(rel)
        out.append(ident)
    return out


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def list_collections(prefix: str, storage_options: Mapping[str, Any] | None = None,
                     since: str | dt.datetime | None = None) -> Listing:
    """Every collection under ``prefix`` (see the module docstring), sorted by ``collection_id``."""
    fs, root = filesystem(prefix, storage_options)
    cutoff = parse_since(since)
    try:
        with storage_errors(prefix):
            if not fs.isdir(root):
                raise InputError(f"{redact(prefix)}: no such folder or prefix")
            found = fs.find(root, withdirs=False, detail=True)
    except (FileNotFoundError, PermissionError) as exc:
        raise InputError(f"{redact(prefix)}: cannot list ({type(exc).__name__}: {exc})") from exc
    except ZipMapError:
        raise
    except Exception as exc:  # noqa: BLE001  (object-store faults -> TransientError, the rest InputError)
        raise io_error(exc, redact(prefix), "cannot list") from exc
    files: dict[str, set[str]] = {}  # folder -> file names directly inside
    infos: dict[str, Mapping[str, Any]] = {}
    for path, info in found.items():
        path = path.rstrip("/")
        rel = posixpath.relpath(path, root) if path != root else ""
        if any(_skipped_part(p) for p in rel.split("/")[:-1]):
            continue
        folder, name = posixpath.split(path)
        files.setdefault(folder, set()).add(name)
        infos[path] = info
    folders = set(files)
    for folder in list(folders):  # every ancestor is a folder too (object stores list no folders)
        while folder != root and folder.startswith(root):
            folder = posixpath.dirname(folder)
            folders.add(folder)

    roots, skipped, num_images = [], [], {}
    for folder in sorted(folders, key=lambda f: (f.count("/"), f)):
        if any(folder == r or folder.startswith(r + "/") for r in roots):
            continue  # inside a collection
        names = files.get(folder, set())
        images = [n for n in files.get(posixpath.join(folder, "images"), set())
                  if posixpath.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        if images:
            roots.append(folder)
            num_images[folder] = len(images)
        elif (names & set(POSE_FILES)) or posixpath.join(folder, "images") in folders:
            what = "an empty images/ folder" if posixpath.join(folder, "images") in folders else "a pose file"
            skipped.append((_url(prefix, root, folder), f"has {what} but no .png/.jpg/.jpeg images in images/"))

    rows = []
    rels = [posixpath.relpath(r, root) if r != root else "" for r in roots]
    ids = _make_ids(rels, posixpath.basename(root) or "collection")
    for folder, ident in zip(roots, ids):
        inside = [p for p in infos if p.startswith(folder + "/")]
        times = [t for t in (_modified(infos[p]) for p in inside) if t is not None]
        modified = max(times) if times else pd.NaT
        if cutoff is not None and not (modified is not pd.NaT and modified > cutoff):
            continue
        rows.append({"collection_id": ident, "source": _url(prefix, root, folder),
                     "format": _format(files, folder), "num_images": num_images[folder], "modified": modified})
    table = pd.DataFrame(rows, columns=list(MANIFEST_LIST_COLUMNS))
    table["num_images"] = table["num_images"].astype("int64")
    table["modified"] = pd.to_datetime(table["modified"], utc=True)
    return Listing(table.sort_values("collection_id", kind="stable").reset_index(drop=True), skipped)


def _url(prefix: str, root: str, folder: str) -> str:
    """The URL of ``folder`` (a path inside ``root``) in the form the user wrote ``prefix``."""
    rel = posixpath.relpath(folder, root) if folder != root else ""
    base = str(prefix).rstrip("/")
    return join(base, rel) if rel else base


__all__ = ["list_collections", "parse_since", "Listing", "MANIFEST_LIST_COLUMNS", "ID_SEPARATOR"]
