"""Writing a reconstruction as one Zarr v3 store (``OUT/<collection_id>.zarr``), and reading it back.

The layout is documented in ``docs/output-format.md``. The write protocol makes a partial output
recognisable:

1. :meth:`ReconstructionStore.begin` removes whatever was at the URL and creates the root group with
   ``zipmap_status = "writing"``;
2. groups and arrays are written (a volume chunk by chunk, each chunk straight into its region);
3. :meth:`ReconstructionStore.complete` consolidates the metadata and only then sets
   ``zipmap_status = "complete"`` — the last write. A run that fails calls :meth:`fail`
   (``zipmap_status = "failed"`` plus ``zipmap_error``); a run that dies leaves ``"writing"``.

Readers must treat anything but ``"complete"`` as not there (:func:`read_status`). A store given the
run's claim (``storage.claims``, as the pipeline always does) writes nothing unless the run still holds
it, and reads the claim back before :meth:`~ReconstructionStore.begin` and before the ``"complete"`` mark.
"""

from __future__ import annotations

import asyncio
import errno
import json
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from errors import StorageError, ZipMapError, io_error, scrub

from .urls import bound_retries, filesystem, fs_options, is_local, redact

STATUS_KEY = "zipmap_status"
RUN_KEY = "zipmap_run_id"
COMPLETE = "complete"
MANIFEST_KEY = "zipmap_manifest"  # storage.integrity: what a complete store holds
FORMAT_VERSION = 1


@dataclass
class Variable:
    """One array to write: named dims, data (or only a shape and dtype for region writes), attributes."""

    dims: tuple[str, ...]
    data: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    chunks: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None
    dtype: Any = None
    fill_value: Any = None

    def __post_init__(self):
        if self.data is not None:
            self.data = np.asarray(self.data)
            self.shape, self.dtype = self.data.shape, self.data.dtype
        if self.shape is None or self.dtype is None:
            raise ValueError("a Variable needs data, or a shape and a dtype")
        if len(self.dims) != len(self.shape):
            raise ValueError(f"dims {self.dims} do not match shape {self.shape}")


def _store(url: str, storage_options: Mapping[str, Any] | None, read_only: bool = False):
    if is_local(url):
        path = str(url)[len("file://"):] if str(url).startswith("file://") else str(url)
        return LocalStore(path, read_only=read_only)
    store = FsspecStore.from_url(str(url), storage_options=fs_options(url, storage_options), read_only=read_only)
    bound_retries(store.fs)  # S3: bounded internal retries, as storage.urls.filesystem
    return store


def _jsonable(value):
    """Attributes as plain JSON (numpy scalars and arrays converted; NaN kept as null; text through
    :func:`errors.scrub`: no attribute, ``zipmap_error`` or provenance included, ever holds a secret)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def compressor_for(dtype) -> BloscCodec:
    """Blosc with LZ4 after a byte shuffle: on depth, points and TSDF chunks it is 3-5x faster than zstd
    and compresses as well or better (the shuffle groups the floats' exponent bytes); every Zarr v3
    reader has it (a core codec)."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle" if np.dtype(dtype).itemsize > 1 else "noshuffle")


def _default_fill(dtype) -> Any:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return np.nan
    if kind in "iub":
        return 0
    return None


class ReconstructionStore:
    """One reconstruction's Zarr store at ``url`` (local path or any fsspec URL)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, run_id: str | None = None,
                 claim=None):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.run_id = run_id or uuid.uuid4().hex
        self.claim = claim  # storage.claims.Claim: with one, nothing is written unless this run still holds it
        self._root: zarr.Group | None = None
        self._arrays: dict[tuple[str, str], Any] = {}  # (group, array) -> AsyncArray made by write_group

    # -- writing ---------------------------------------------------------------------------------
    def begin(self, attrs: Mapping[str, Any]) -> None:
        """Remove anything at the URL and create the root group marked ``"writing"``."""
        self._hold(verify=True)
        fs, path = filesystem(self.url, self.storage_options)
        try:
            if fs.exists(path):
                fs.rm(path, recursive=True)
            self._root = zarr.open_group(store=_store(self.url, self.storage_options), mode="w", zarr_format=3)
            self._arrays.clear()
            # update_attributes writes the metadata document once (attrs.update writes it once per key)
            self._root.update_attributes(_jsonable({**attrs, "zipmap_format_version": FORMAT_VERSION,
                                               RUN_KEY: self.run_id, STATUS_KEY: "writing"}))
        except ZipMapError:
            raise
        except Exception as exc:  # noqa: BLE001  (object-store faults -> TransientError, the rest StorageError)
            raise io_error(exc, redact(self.url), "cannot create the output store", StorageError) from exc

    def _hold(self, verify: bool = False) -> None:
        """With a claim: raise ``storage.claims.ClaimLost`` unless this run still holds it (``verify``: read
        back from storage, else this writer's own view)."""
        if self.claim is not None:
            self.claim.verify() if verify else self.claim.check()

    @property
    def root(self) -> zarr.Group:
        if self._root is None:
            self._root = zarr.open_group(store=_store(self.url, self.storage_options), mode="r+")
        return self._root

    def write_group(self, name: str, variables: Mapping[str, Variable], attrs: Mapping[str, Any] | None = None,
                    ) -> zarr.Group:
        """Create group ``name`` and its arrays (replacing arrays of the same name); arrays given with data
        are written now. The arrays are created and written concurrently through zarr's asynchronous
        API (``Group._async_group``; zarr is pinned, and the store tests cover this path)."""
        self._hold()
        group = self.root.require_group(name)
        if attrs:
            group.update_attributes(_jsonable(attrs))

        async def create(var_name: str, var: Variable) -> None:
            fill = var.fill_value if var.fill_value is not None else _default_fill(var.dtype)
            dtype = str if np.dtype(var.dtype).kind in "UOT" else var.dtype
            kwargs = {} if fill is None else {"fill_value": fill}
            if dtype is not str:
                kwargs["compressors"] = compressor_for(var.dtype)
            self._arrays.pop((name, var_name), None)
            # overwrite=True skips the probes for an existing v2/v3 node (begin() started from an empty
            # store); empty chunks are written too: checking every chunk for emptiness costs more than
            # storing the few all-fill chunks, which compress to almost nothing
            arr = await group._async_group.create_array(
                var_name, shape=var.shape, dtype=dtype, chunks=var.chunks or var.shape, dimension_names=var.dims,
                attributes=_jsonable(var.attrs), overwrite=True, config={"write_empty_chunks": True}, **kwargs)
            if var.data is not None:
                await arr.setitem(Ellipsis, var.data.astype(str) if dtype is str else var.data)
            self._arrays[(name, var_name)] = arr

        async def create_all() -> None:
            await asyncio.gather(*(create(n, v) for n, v in variables.items()))

        # all arrays at once: on an object store each metadata document and chunk is a request, and
        # one after another they would cost a round trip each
        sync(create_all())
        return group

    def write_regions(self, group: str, items: Mapping[str, tuple[Sequence[slice], np.ndarray]]) -> None:
        """Write ``{name: (region, data)}`` into arrays of group ``group``, all at once (regions should be
        chunk-aligned)."""
        self._hold()
        if any((group, name) not in self._arrays for name in items):  # arrays this writer did not create
            target = self.root[group]
            self._arrays.update({(group, name): target[name]._async_array for name in items})
        arrays = [(self._arrays[(group, name)], tuple(region), data) for name, (region, data) in items.items()]

        async def write_all() -> None:
            await asyncio.gather(*(arr.setitem(region, data) for arr, region, data in arrays))

        sync(write_all())

    def update_attrs(self, attrs: Mapping[str, Any], group: str | None = None) -> None:
        self._hold()
        target = self.root if group is None else self.root[group]
        target.update_attributes(_jsonable(attrs))

    def owned(self) -> bool:
        """Whether the store on storage still carries this writer's run id (another run may have taken over)."""
        current = read_attrs(self.url, self.storage_options) or {}
        return current.get(RUN_KEY) == self.run_id

    def complete(self, attrs: Mapping[str, Any] | None = None) -> None:
        """Consolidate metadata, then — the last write — mark the store complete.

        Refuses (:class:`errors.StorageError`) when another run has begun the same store since this
        one did, so two runs writing one output cannot both mark it complete."""
        if not self.owned():
            raise StorageError(f"{redact(self.url)}: another run took over this output; not marking it complete")
        if attrs:
            self.update_attrs(attrs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            zarr.consolidate_metadata(_store(self.url, self.storage_options))
        self._root = None
        manifest = self.manifest()
        if not self.owned():
            raise StorageError(f"{redact(self.url)}: another run took over this output; not marking it complete")
        self._hold(verify=True)  # the claim is still this run's, right before the last write
        self.update_attrs({MANIFEST_KEY: manifest, STATUS_KEY: COMPLETE})  # one write: manifest and status

    def manifest(self) -> dict:
        """The chunk manifest of the store as it is now (``storage.integrity``: per array its layout, number of
        chunk objects and bytes); refuses (:class:`errors.StorageError`) when a chunk that every complete
        store has (all are written) is not there."""
        from .integrity import array_layout, build_manifest, list_objects

        arrays = {path: array_layout(node.shape, node.shards or node.chunks,
                                     node.metadata.chunk_key_encoding.to_dict())
                  for path, node in self.root.members(max_depth=None) if isinstance(node, zarr.Array)}
        manifest, missing = build_manifest(arrays, list_objects(self.url, self.storage_options))
        if missing:
            raise StorageError(f"{redact(self.url)}: {len(missing)} chunk(s) were not written (first: {missing[0]}); "
                               "not marking it complete")
        return manifest

    def fail(self, reason: str) -> None:
        """Mark a store that was begun as failed (never complete); a no-op if nothing was created."""
        try:
            if read_status(self.url, self.storage_options) is None or not self.owned():
                return  # nothing of ours to mark
        except Exception:  # the original error matters more than a failure to record it  # noqa: BLE001
            return
        mark = {STATUS_KEY: "failed", "zipmap_error": reason}
        try:
            self.update_attrs(mark)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                return
            # a full disk: the partial arrays are worthless; free their space so the store says "failed"
            # instead of staying "writing" (a reader must never mistake it for anything else)
            try:
                fs, path = filesystem(self.url, self.storage_options)
                for child in fs.ls(path, detail=False):
                    if fs.isdir(child):
                        fs.rm(child, recursive=True)
                self._root = None
                self.update_attrs(mark)
            except Exception:  # noqa: BLE001
                pass
        except Exception:  # noqa: BLE001
            pass


def read_attrs(url: str, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """Root attributes of the store at ``url``, or ``None`` if there is no store."""
    fs, path = filesystem(url, storage_options)
    try:
        doc = json.loads(fs.cat_file(f"{path}/zarr.json"))
    except FileNotFoundError:
        return None
    except ZipMapError:
        raise
    except ValueError as exc:
        raise StorageError(f"{redact(url)}: unreadable zarr.json ({exc})") from exc
    except Exception as exc:  # noqa: BLE001  (object-store faults -> TransientError, the rest StorageError)
        raise io_error(exc, f"{redact(url)}/zarr.json", "unreadable", StorageError) from exc
    return dict(doc.get("attributes") or {})


def read_status(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """``"complete"``, ``"writing"``, ``"failed"``, or ``None`` when no store is there."""
    attrs = read_attrs(url, storage_options)
    return None if attrs is None else attrs.get(STATUS_KEY)


def open_reconstruction(url: str, storage_options: Mapping[str, Any] | None = None, require_complete: bool = True):
    """The store as an ``xarray.DataTree`` (lazy); refuses an incomplete store unless told otherwise."""
    import xarray as xr

    if require_complete:
        status = read_status(url, storage_options)
        if status != COMPLETE:
            raise StorageError(f"{redact(url)}: not a complete reconstruction (zipmap_status={status!r})")
    kwargs = {} if is_local(url) else {"storage_options": dict(storage_options or {})}
    consolidated = None if require_complete else False  # only a complete store has consolidated metadata
    return xr.open_datatree(str(url), engine="zarr", consolidated=consolidated, **kwargs)


__all__ = ["ReconstructionStore", "Variable", "read_attrs", "read_status", "open_reconstruction", "STATUS_KEY",
           "COMPLETE"]
