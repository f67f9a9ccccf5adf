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
    weights: str = ""  # checkpoint URL; empty: the bundled model
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


__all__ = ["Settings", "load_settings", "SETTINGS_ENV"]
