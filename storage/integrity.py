"""Whether a complete store is still what its run wrote, and what it was made from.

Two root attributes record this (``docs/output-format.md``):

- ``zipmap_manifest``: what the run wrote, recorded by ``ReconstructionStore.complete`` in the write that
  marks the store complete: per array (``views/depth``, ``volume/tsdf``, ...) its shape, chunk shape and
  chunk key encoding — every chunk is written (``write_empty_chunks``), so these give every chunk key that
  must exist — and the number and total bytes of its chunk objects (a truncated or rewritten chunk
  changes them).
- ``zipmap_fingerprint``: what made it: the input files (one listing: relative path, size, and the ETag
  on object stores or the mtime on local disks, of the images and pose files), the parameters that change
  the result, the checkpoint's sha256 and the store format version; each part is kept, so a mismatch can
  say which part changed (:func:`fingerprint_changes`). ``tasks.integrity`` builds it.

:func:`check_store` checks a store against its manifest with one listing of the store; no chunk is read.
Object-store faults while checking raise :class:`errors.TransientError` (retry; never take a fault for
damage), other failures to read :class:`errors.StorageError`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from errors import StorageError, ZipMapError, io_error

from .collection import IMAGE_EXTENSIONS
from .urls import filesystem, redact
from .zarr_store import COMPLETE, MANIFEST_KEY, STATUS_KEY, read_attrs

FINGERPRINT_KEY = "zipmap_fingerprint"
MANIFEST_VERSION = 1
METADATA = "zarr.json"
# the files a reconstruction reads besides the images (storage.collection: the three pose formats)
POSE_FILE_NAMES = frozenset({"cameras.json", "transforms.json", "cameras.bin", "cameras.txt", "images.bin",
                             "images.txt"})


# --- the chunk manifest -------------------------------------------------------------------------------
def chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    """Chunks per dimension."""
    return tuple(math.ceil(s / c) if c else 0 for s, c in zip(shape, chunks))


def chunk_keys(shape: Sequence[int], chunks: Sequence[int], encoding: Mapping[str, Any]) -> Iterator[str]:
    """Every chunk key of an array (relative to the array), in index order, for Zarr v3's ``default``
    (``c/0/1/0``) and ``v2`` (``0.1.0``) chunk key encodings."""
    name = encoding.get("name", "default")
    separator = (encoding.get("configuration") or {}).get("separator", "/" if name == "default" else ".")
    if name not in ("default", "v2"):
        raise StorageError(f"chunk key encoding {name!r} is not supported by the integrity check")
    for index in itertools.product(*(range(n) for n in chunk_grid(shape, chunks))):
        parts = [str(i) for i in index]
        yield separator.join(["c", *parts]) if name == "default" else (separator.join(parts) or "0")


def list_objects(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Every object of the store at ``url``: path relative to the store -> size in bytes (one listing)."""
    fs, root = filesystem(url, storage_options)
    try:
        fs.invalidate_cache(root)
        found = fs.find(root, withdirs=False, detail=True)
    except FileNotFoundError:
        return {}
    except ZipMapError:
        raise
    except Exception as exc:  # noqa: BLE001  (object-store faults -> TransientError, the rest StorageError)
        raise io_error(exc, redact(url), "cannot be listed", StorageError) from exc
    out = {}
    for path, info in found.items():
        if info.get("type", "file") == "directory":
            continue
        rel = posixpath.relpath(path.rstrip("/"), root)
        if not rel.startswith(".."):
            out[rel] = int(info.get("size") or 0)
    return out


def _by_array(arrays: Mapping[str, Any], objects: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """The chunk objects of each array (``{array: {chunk key: size}}``): everything under the array's
    folder but its ``zarr.json`` (an array has no children)."""
    out: dict[str, dict[str, int]] = {name: {} for name in arrays}
    for rel, size in objects.items():
        parts = rel.split("/")
        for k in range(len(parts) - 1, 0, -1):
            owner = "/".join(parts[:k])
            if owner in out:
                key = "/".join(parts[k:])
                if key != METADATA:
                    out[owner][key] = size
                break
    return out


def array_layout(shape: Sequence[int], chunks: Sequence[int], encoding: Mapping[str, Any]) -> dict:
    return {"shape": [int(s) for s in shape], "chunks": [int(c) for c in chunks],
            "chunk_key_encoding": json.loads(json.dumps(dict(encoding)))}


def build_manifest(arrays: Mapping[str, Mapping[str, Any]], objects: Mapping[str, int]) -> tuple[dict, list[str]]:
    """The manifest of a store (``arrays``: :func:`array_layout` per array path; ``objects``:
    :func:`list_objects`), and the chunk keys that should be there and are not (``array key`` each)."""
    found = _by_array(arrays, objects)
    entries, missing = {}, []
    for name in sorted(arrays):
        layout = dict(arrays[name])
        chunks = found[name]
        missing += [f"{name} {key}" for key in chunk_keys(layout["shape"], layout["chunks"],
                                                           layout["chunk_key_encoding"]) if key not in chunks]
        entries[name] = {**layout, "num_chunks": len(chunks), "bytes": sum(chunks.values())}
    return {"version": MANIFEST_VERSION, "arrays": entries}, missing


# --- checking a store ---------------------------------------------------------------------------------
@dataclass
class StoreCheck:
    """The outcome of :func:`check_store`: ``ok`` only for a complete store whose every recorded chunk and
    metadata document is there with the recorded chunk count and bytes."""

    url: str
    status: str | None = None  # zipmap_status; None when there is no store
    has_manifest: bool = False
    missing: dict[str, list[str]] = field(default_factory=dict)  # array -> missing chunk keys, index order
    missing_metadata: list[str] = field(default_factory=list)  # metadata documents (zarr.json) not there
    changed: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # array -> found/recorded counts
    attrs: dict | None = None  # the root attributes

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def damaged(self) -> bool:
        return bool(self.missing or self.missing_metadata or self.changed)

    @property
    def ok(self) -> bool:
        return self.complete and self.has_manifest and not self.damaged

    def problem(self) -> str:
        """One line: ``""`` when ok; else ``no store``, ``not complete (zipmap_status='writing')``, ``no
        manifest``, or the damage: ``missing chunks volume/tsdf c/0/1/0 (+3 more)``, ``missing metadata
        views/depth/zarr.json``, ``changed chunks volume/tsdf: 7 objects, 1234 bytes (recorded 8, 1300)``."""
        if self.status is None:
            return "no store"
        if not self.complete:
            return f"not complete (zipmap_status={self.status!r})"
        if not self.has_manifest:
            return "no manifest"
        parts = []
        if self.missing:
            first_array = next(iter(self.missing))
            total = sum(len(keys) for keys in self.missing.values())
            more = ""
            if total > 1:
                more = f" (+{total - 1} more" + (f" in {len(self.missing)} arrays)" if len(self.missing) > 1 else ")")
            parts.append(f"missing chunks {first_array} {self.missing[first_array][0]}{more}")
        if self.missing_metadata:
            more = f" (+{len(self.missing_metadata) - 1} more)" if len(self.missing_metadata) > 1 else ""
            parts.append(f"missing metadata {self.missing_metadata[0]}{more}")
        for name, (n, size, rec_n, rec_size) in self.changed.items():
            parts.append(f"changed chunks {name}: {n} objects, {size} bytes (recorded {rec_n}, {rec_size})")
        return "; ".join(parts)


def check_attrs(url: str, attrs: Mapping[str, Any] | None, objects: Mapping[str, int]) -> StoreCheck:
    """:func:`check_store` on root attributes and a listing already read."""
    check = StoreCheck(redact(url), attrs=None if attrs is None else dict(attrs))
    if attrs is None:
        return check
    check.status = attrs.get(STATUS_KEY)
    manifest = attrs.get(MANIFEST_KEY)
    check.has_manifest = isinstance(manifest, Mapping) and isinstance(manifest.get("arrays"), Mapping)
    if not (check.complete and check.has_manifest):
        return check
    recorded = manifest["arrays"]
    try:
        found = _by_array(recorded, objects)
        groups = sorted({"/".join(name.split("/")[:k]) for name in recorded for k in range(1, name.count("/") + 1)})
        check.missing_metadata = [f"{node}/{METADATA}" for node in [*groups, *sorted(recorded)]
                                  if f"{node}/{METADATA}" not in objects]
        for name in sorted(recorded):
            entry = recorded[name]
            chunks = found[name]
            absent = [key for key in chunk_keys(entry["shape"], entry["chunks"], entry["chunk_key_encoding"])
                      if key not in chunks]
            if absent:
                check.missing[name] = absent
                continue
            counts = (len(chunks), sum(chunks.values()), int(entry["num_chunks"]), int(entry["bytes"]))
            if counts[:2] != counts[2:]:
                check.changed[name] = counts
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{redact(url)}: unreadable {MANIFEST_KEY} ({type(exc).__name__}: {exc})") from exc
    return check


def check_store(url: str, storage_options: Mapping[str, Any] | None = None,
                attrs: Mapping[str, Any] | None = None) -> StoreCheck:
    """The integrity of the store at ``url`` (see :class:`StoreCheck`): its root attributes (``attrs``, when
    the caller has them already) and one listing of the store when it is complete and has a manifest."""
    if attrs is None:
        attrs = read_attrs(url, storage_options)
    needs_listing = attrs is not None and attrs.get(STATUS_KEY) == COMPLETE and MANIFEST_KEY in attrs
    return check_attrs(url, attrs, list_objects(url, storage_options) if needs_listing else {})


# --- the fingerprint's parts that come from storage -----------------------------------------------------
def _is_input(rel: str) -> bool:
    """Files a reconstruction reads: images and pose files, not ``depth/`` (ground truth, not read),
    hidden or ``_`` folders, or Zarr outputs."""
    parts = rel.split("/")
    if parts[0] == "depth" or any(p.startswith((".", "_")) or p.lower().endswith(".zarr") for p in parts[:-1]):
        return False
    name = parts[-1]
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS or name in POSE_FILE_NAMES


def _version(info: Mapping[str, Any]) -> str:
    """What changes when a file's content does: the ETag on object stores, else the modification time."""
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return str(info[key]).strip('"')
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is not None:
            return value.isoformat() if hasattr(value, "isoformat") else repr(value)
    return ""


def input_files(src: str, storage_options: Mapping[str, Any] | None = None) -> list[list]:
    """``[relative path, size, version]`` of each image and pose file of the collection at ``src``, sorted
    (one recursive listing; no file is read). A folder that is not there lists nothing (reading it says
    why); object-store faults raise :class:`errors.TransientError`."""
    fs, root = filesystem(src, storage_options)
    try:
        fs.invalidate_cache(root)
        found = fs.find(root, withdirs=False, detail=True)
    except FileNotFoundError:
        return []
    except ZipMapError:
        raise
    except Exception as exc:  # noqa: BLE001  (object-store faults -> TransientError, the rest InputError)
        raise io_error(exc, redact(src), "cannot be listed") from exc
    out = []
    for path, info in found.items():
        rel = posixpath.relpath(path.rstrip("/"), root)
        if info.get("type", "file") != "directory" and not rel.startswith("..") and _is_input(rel):
            out.append([rel, int(info.get("size") or 0), _version(info)])
    return sorted(out)


def digest(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def inputs_part(files: Sequence[Sequence]) -> dict:
    """The fingerprint's ``inputs``: number of files, their bytes, and the sha256 of the listing."""
    return {"files": len(files), "bytes": int(sum(f[1] for f in files)), "sha256": digest([list(f) for f in files])}


def make_fingerprint(files: Sequence[Sequence], parameters: Mapping[str, Any], weights_sha256: str,
                     format_version: int) -> dict:
    """The fingerprint: its parts and ``sha256``, the digest of them all."""
    parts = {"format_version": int(format_version), "inputs": inputs_part(files),
             "parameters": json.loads(json.dumps(dict(parameters))), "weights_sha256": str(weights_sha256)}
    return {**parts, "sha256": digest(parts)}


def _show(value) -> str:
    return "none" if value is None else str(value)


def fingerprint_changes(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """What differs between a store's recorded fingerprint and the current one, one phrase per part, in the
    order ``parameters changed (max_voxels 24 -> 64)``, ``inputs changed``, ``weights changed``, ``format
    changed``; empty when they agree. A store without one gives ``["no fingerprint"]``."""
    if not isinstance(recorded, Mapping):
        return ["no fingerprint"]
    changes = []
    old, new = recorded.get("parameters") or {}, current.get("parameters") or {}
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differ:
        changes.append("parameters changed (" + ", ".join(f"{k} {_show(old.get(k))} -> {_show(new.get(k))}"
                                                          for k in differ) + ")")
    old_in, new_in = recorded.get("inputs") or {}, current.get("inputs") or {}
    if old_in.get("sha256") != new_in.get("sha256"):
        counts = f" ({new_in.get('files')} files, were {old_in.get('files')})" \
            if old_in.get("files") != new_in.get("files") else ""
        changes.append(f"inputs changed{counts}")
    if recorded.get("weights_sha256") != current.get("weights_sha256"):
        changes.append("weights changed")
    if recorded.get("format_version") != current.get("format_version"):
        changes.append(f"format changed (version {_show(recorded.get('format_version'))} -> "
                       f"{_show(current.get('format_version'))})")
    return changes


__all__ = ["MANIFEST_KEY", "FINGERPRINT_KEY", "StoreCheck", "check_store", "check_attrs", "build_manifest",
           "array_layout", "chunk_keys", "chunk_grid", "list_objects", "input_files", "inputs_part",
           "make_fingerprint", "fingerprint_changes", "digest"]
