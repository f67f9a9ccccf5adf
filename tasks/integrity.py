"""What made an output, and whether an existing output can be reused for a rerun.

:func:`fingerprint` is what a run records (root attribute ``zipmap_fingerprint``): the collection's
image and pose files (one listing, no image read), the parameters in :data:`RESULT_PARAMETERS`, the
checkpoint's sha256 and the store format version. :func:`reusable` decides whether a rerun may skip an
output: only a complete store whose every recorded chunk is there (``storage.integrity.check_store``)
and whose fingerprint matches; otherwise it says why the collection is redone (``redone: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from errors import ZipMapError, is_transient
from model.inference import weights_sha256
from settings import ReconstructionSettings
from storage.integrity import FINGERPRINT_KEY, check_store, fingerprint_changes, input_files, make_fingerprint
from storage.zarr_store import COMPLETE, FORMAT_VERSION, MANIFEST_KEY, STATUS_KEY, read_attrs

# the settings that change what a run writes; the others do not: ``weights`` counts by its sha256,
# ``device`` gives the same result anywhere (tests/storage/test_integrity.py keeps this list complete)
RESULT_PARAMETERS = ("preset", "voxel_size", "max_voxels", "truncation_voxels", "max_offline_frames", "refine_poses")
NOT_RESULT_PARAMETERS = ("weights", "device")


def result_parameters(settings: ReconstructionSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in RESULT_PARAMETERS}


def fingerprint(src: str, settings: ReconstructionSettings, storage_options: Mapping[str, Any] | None = None) -> dict:
    """The fingerprint of reconstructing ``src`` with ``settings`` (see the module docstring); a remote
    checkpoint is fetched into the local cache to hash it, as a run would."""
    files = input_files(src, storage_options)
    return make_fingerprint(files, result_parameters(settings), weights_sha256(settings.weights), FORMAT_VERSION)


def reusable(url: str, src: str, settings: ReconstructionSettings,
             storage_options: Mapping[str, Any] | None = None) -> tuple[dict | None, str]:
    """``(root attributes, "")`` when the output at ``url`` may be skipped, else ``(None, reason)``: ``""``
    when there is no output yet, otherwise ``redone: not complete (zipmap_status='failed')``, ``redone: no
    manifest``, ``redone: parameters changed (max_voxels 24 -> 64)`` (``inputs changed``, ``weights
    changed``, ``format changed``), ``redone: missing chunks volume/tsdf c/0/1/0 (+3 more)``, ... .

    A transient fault while checking raises (:class:`errors.TransientError`; the caller retries rather
    than recompute over a good output); an output that cannot be checked for another reason is redone.
    """
    try:
        attrs = read_attrs(url, storage_options)
        if attrs is None:
            return None, ""
        status = attrs.get(STATUS_KEY)
        if status != COMPLETE:
            return None, f"redone: not complete ({STATUS_KEY}={status!r})"
        if not isinstance(attrs.get(MANIFEST_KEY), Mapping):
            return None, "redone: no manifest"
        changes = fingerprint_changes(attrs.get(FINGERPRINT_KEY), fingerprint(src, settings, storage_options))
        if changes:
            return None, "redone: " + "; ".join(changes)
        check = check_store(url, storage_options, attrs=attrs)
        if not check.ok:
            return None, f"redone: {check.problem()}"
        return attrs, ""
    except (ZipMapError, KeyError, TypeError, AttributeError, ValueError) as exc:  # a malformed attribute too
        if is_transient(exc):
            raise
        return None, f"redone: cannot check the output ({exc})"


__all__ = ["fingerprint", "reusable", "result_parameters", "RESULT_PARAMETERS", "NOT_RESULT_PARAMETERS"]
