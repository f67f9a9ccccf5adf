"""Operator settings: documented defaults < one settings file < environment variables.

The settings file is TOML (``zipmap.toml`` in the working directory, or the file ``ZIPMAP_SETTINGS``
names), one table ``[zipmap]``; every key can also be set as ``ZIPMAP_<KEY>`` in the environment
(upper case). ``infra/settings.example.toml`` lists them all with their defaults.

Object-store endpoints and credentials are not settings of ours: s3fs reads the standard AWS
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ...),
so they never end up in images, manifests, deployments or this file. Prefect's own settings
(``PREFECT_API_URL``) and Dask's (``DASK_*``) likewise stay theirs.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from errors import ConfigError

SETTINGS_ENV = "ZIPMAP_SETTINGS"
DEFAULT_FILE = "zipmap.toml"


@dataclass(frozen=True)
class Settings:
    """What an operator configures (see ``infra/settings.example.toml``)."""

    work_pool: str = "zipmap"  # the Prefect process work pool the deployments run in
    nightly_cron: str = "0 2 * * *"  # reconstruct-batch/nightly
    timezone: str = "UTC"
    manifest: str = ""  # nightly: a manifest URL, or ...
    prefix: str = ""  # ... a prefix whose collections are listed at run time
    since: str = "1d"  # nightly with a prefix: only collections changed in this window
    out: str = ""  # output folder or URL of the batch deployments
    cluster: str = ""  # Dask scheduler address; empty: a LocalCluster per run
    workers: int = 2  # processes of that LocalCluster
    weights: str = ""  # checkpoint URL (published .pt files recognised); empty: the bundled model
    preset: str = ""  # network variant, overriding the one recognised from the checkpoint
    max_voxels: int = 128


def _coerce(name: str, value, kind, where: str):
    try:
        if kind is int or kind == "int":
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: setting {name!r} must be an integer, not {value!r}") from None


def load_settings(path: str | os.PathLike | None = None, environ: dict | None = None) -> Settings:
    """The settings: defaults, then the file (``path``, ``$ZIPMAP_SETTINGS`` or ``./zipmap.toml`` when it
    exists), then ``ZIPMAP_*`` variables. Unknown keys in the file are errors (a typo would otherwise
    be silently ignored)."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    known = {f.name: f.type for f in fields(Settings)}
    file = path or environ.get(SETTINGS_ENV) or (DEFAULT_FILE if Path(DEFAULT_FILE).exists() else None)
    if file:
        try:
            with open(file, "rb") as f:
                table = tomllib.load(f).get("zipmap", {})
        except FileNotFoundError:
            raise ConfigError(f"{file}: settings file not found (set by {SETTINGS_ENV} or --settings)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML ({exc})") from None
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"{file}: unknown setting(s) {unknown} in [zipmap]; known: {sorted(known)}")
        values.update({k: _coerce(k, v, known[k], str(file)) for k, v in table.items()})
    for name, kind in known.items():
        env = f"ZIPMAP_{name.upper()}"
        if env in environ:
            values[name] = _coerce(name, environ[env], kind, env)
    return Settings(**values)


# --- one run's parameters ---------------------------------------------------------------------------
REFINE_MODES = ("auto", "on", "off")
MIN_VOXELS = 4  # a volume thinner than this on its longest side cannot hold a surface
MAX_VOXELS = 2048  # 2048^3 voxels are ~80 GB of output: beyond that the voxel size is surely a mistake


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ReconstructionSettings:
    """The settings of reconstructing one collection: one typed object, validated once where a run
    enters (CLI, flow, batch) and carried through every stage. A bad value raises
    :class:`errors.ConfigError` in one line, before images are read, servers start or torch loads."""

    weights: str | None = None  # checkpoint URL; None: the bundled model
    preset: str | None = None  # overrides the variant recognised from the checkpoint
    voxel_size: float | None = None  # world units; None: the longest side gets max_voxels voxels
    max_voxels: int = 128
    truncation_voxels: float = 3.0
    device: str | None = None  # "cpu", "cuda" or "cuda:N"; None: CUDA when present
    max_offline_frames: int | None = None  # above this many frames, streaming windows of this size
    refine_poses: str = "auto"  # "auto", "on" or "off"

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if self.voxel_size is not None:
            if not _is_number(self.voxel_size) or not math.isfinite(self.voxel_size) or self.voxel_size <= 0:
                bad(f"voxel size must be a positive number of world units, got {self.voxel_size!r}")
        if not isinstance(self.max_voxels, int) or isinstance(self.max_voxels, bool) or not (
                MIN_VOXELS <= self.max_voxels <= MAX_VOXELS):
            bad(f"max voxels must be an integer from {MIN_VOXELS} to {MAX_VOXELS}, got {self.max_voxels!r}")
        if not _is_number(self.truncation_voxels) or not 0.5 <= self.truncation_voxels <= 64:
            bad(f"truncation must be 0.5 to 64 voxels, got {self.truncation_voxels!r}")
        if self.max_offline_frames is not None and (
                not isinstance(self.max_offline_frames, int) or self.max_offline_frames < 1):
            bad(f"max offline frames must be a positive integer, got {self.max_offline_frames!r}")
        if self.refine_poses not in REFINE_MODES:
            bad(f"pose refinement must be one of {', '.join(REFINE_MODES)}, got {self.refine_poses!r}")
        if self.device is not None:
            check_device(self.device, here=False)
        if self.preset is not None:
            from model.config import PRESETS  # no torch: the presets are plain data

            if self.preset not in PRESETS:
                bad(f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")

    def check_here(self) -> ReconstructionSettings:
        """The checks that hold only on the machine that runs the stages: the device exists, a local
        checkpoint is there. ``zipmap reconstruct`` and batches on a local cluster call it at entry."""
        if self.device is not None:
            check_device(self.device)
        if self.weights is not None:
            check_weights(self.weights)
        return self

    @classmethod
    def from_dict(cls, values: dict | None) -> ReconstructionSettings:
        """From plain data (flow parameters, JSON); unknown keys are errors."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown reconstruction setting(s) {unknown}; known: {sorted(known)}")
        if isinstance(values.get("voxel_size"), int) and not isinstance(values["voxel_size"], bool):
            values["voxel_size"] = float(values["voxel_size"])
        return cls(**{k: (None if v == "" and k in ("weights", "preset", "device") else v)
                      for k, v in values.items()})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_device(device: str, here: bool = True) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``; with ``here``, CUDA only where this machine has an NVIDIA driver
    (checked from the device files, without importing torch)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if here and kind == "cuda" and not Path("/dev/nvidiactl").exists():
        raise ConfigError(f"device {device!r}: this machine has no CUDA device (no NVIDIA driver); use --device cpu")


def check_weights(weights: str) -> None:
    """A local checkpoint must exist and be a file; URLs are checked when they are read (a remote store
    that does not answer is retried there)."""
    if "://" in weights and not weights.startswith("file://"):
        return
    path = Path(weights[len("file://"):] if weights.startswith("file://") else weights)
    if not path.is_file():
        raise ConfigError(f"{weights}: checkpoint file not found" if not path.exists()
                          else f"{weights}: a checkpoint must be a file, not a folder")


__all__ = ["Settings", "load_settings", "SETTINGS_ENV", "ReconstructionSettings", "REFINE_MODES", "check_device",
           "check_weights"]
